# ruff: noqa - the guide's code as it is written (its style kept on purpose)
# A train.py written the way Microsoft's guide "Interactive debugging with VS Code" (Azure ML)
# says: the --remote_debug* flags, and its own debugpy.listen(...) / debugpy.wait_for_client()
# block. It runs unchanged under aml_magics, which owns the debugger:
#
#     aml-debug run examples/guide_train.py --port 0 --timeout 60 -- \
#         --remote_debug --remote_debug_client_ip 127.0.0.1 --remote_debug_port 5699 --input_data abc
#
# The flags reach the script untouched; the run's debugger follows the aml_magics options
# (--port, --bind, --timeout). debugpy.listen() returns the run's own endpoint and opens
# nothing; debugpy.wait_for_client() waits at most the run's attach window (README: "Scripts
# written the guide's way"). The only change from the guide: azureml-core is optional here, so
# the example also runs where it is not installed (a plain Docker image, this machine).

import argparse
import os
import socket

import debugpy

try:
    from azureml.core import Run
except ImportError:  # not in the guide: azureml-core is absent outside Azure ML images
    Run = None

print("In train.py")
print("As a data scientist, this is where I use my training code.")

parser = argparse.ArgumentParser("train")

parser.add_argument("--input_data", type=str, help="input data")
parser.add_argument("--output_train", type=str, help="output_train directory")

# Argument check for remote debugging
parser.add_argument('--remote_debug', action='store_true')
parser.add_argument('--remote_debug_connection_timeout', type=int,
                    default=300,
                    help='Defines how much time the Azure Machine Learning compute target '
                    'will await a connection from a debugger client (VSCODE).')
parser.add_argument('--remote_debug_client_ip', type=str,
                    help='Defines IP Address of VS Code client')
parser.add_argument('--remote_debug_port', type=int,
                    default=5678,
                    help='Defines Port of VS Code client')

# Get run object, so we can find and log the IP of the host instance
global run
run = Run.get_context() if Run is not None else None

args = parser.parse_args()

# Start debugger if remote_debug is enabled
if args.remote_debug:
    print(f'Timeout for debug connection: {args.remote_debug_connection_timeout}')
    # Log the IP and port
    try:
        ip = args.remote_debug_client_ip
    except:
        print("Need to supply IP address for VS Code client")
    print(f'ip_address: {ip}')
    debugpy.listen(address=(ip, args.remote_debug_port))
    # Wait for the timeout for debugger to attach
    debugpy.wait_for_client()
    print(f'Debugger attached = {debugpy.is_client_connected()}')

print("Argument 1: %s" % args.input_data)
print("Argument 2: %s" % args.output_train)
print(f"remote_debug_port {args.remote_debug_port}, remote_debug_connection_timeout "
      f"{args.remote_debug_connection_timeout}")

if not (args.output_train is None):
    os.makedirs(args.output_train, exist_ok=True)
    print("%s created" % args.output_train)
