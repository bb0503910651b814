"""Test helpers shipped with aml_magics (a DAP client that plays VS Code)."""
