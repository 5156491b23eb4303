"""A stand-in for helm (or any deploy command): records how it was run, then does what
$FAKE_HELM_DIR/behaviour.json says.

Each call appends one JSON line to $FAKE_HELM_DIR/calls.jsonl: argv, the whole
environment, the working directory, what stdin held, and the content of an artifact
path given after --artifact. behaviour.json: {"exit": 0, "sleep": 0, "print": [NAME,
...] (environment variables to print), "noise": bytes of filler before them,
"grandchild": true (start a sleeping grandchild and write its pid to grandchild.pid),
"print_base64": [NAME, ...] (their values base64-encoded, standard and url-safe)}.
"""

import base64
import json
import os
import subprocess
import sys
import time

here = os.environ["FAKE_HELM_DIR"]
try:
    with open(os.path.join(here, "behaviour.json")) as f:
        behaviour = json.load(f)
except FileNotFoundError:
    behaviour = {}
artifact = None
if "--artifact" in sys.argv:
    path = sys.argv[sys.argv.index("--artifact") + 1]
    content = None
    if os.path.isfile(path):
        with open(path) as f:
            content = f.read()
    artifact = {"path": path, "content": content}
with open(os.path.join(here, "calls.jsonl"), "a") as f:
    record = {
        "argv": sys.argv[1:],
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "stdin": sys.stdin.read(),
        "artifact": artifact,
    }
    f.write(json.dumps(record) + "\n")
if behaviour.get("grandchild"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(os.path.join(here, "grandchild.pid"), "w") as f:
        f.write(str(child.pid))
sys.stdout.write("x" * int(behaviour.get("noise", 0)) + "\n")
for name in behaviour.get("print", []):
    print(f"{name}={os.environ.get(name)}", flush=True)
for name in behaviour.get("print_base64", []):  # as a Kubernetes Secret's data shows it
    value = os.environ.get(name, "").encode()
    print(f"{name}: {base64.b64encode(value).decode()}", flush=True)
    print(f"{name}.url: {base64.urlsafe_b64encode(value).decode().rstrip('=')}", flush=True)
print("deploying", " ".join(sys.argv[1:]), flush=True)
time.sleep(float(behaviour.get("sleep", 0)))
sys.exit(int(behaviour.get("exit", 0)))
