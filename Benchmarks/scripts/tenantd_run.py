"""What the benchmark scripts share: a fresh release tenantd on a free port, and tenant-bench
against it."""
import contextlib
import json
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", ".build", "release", "tenant-bench")


@contextlib.contextmanager
def tenantd(binary, token, threads=0, environment=None):
    """Runs `binary` on a temporary data directory (`--fsync everysec`, the operator's `token`,
    new tenants on the enterprise plan); yields (port, directory) and removes both after."""
    directory = tempfile.mkdtemp(prefix="tenantd-bench-")
    env = dict(os.environ, TENANT_ADMIN_TOKEN=token, TENANT_DEFAULT_PLAN="enterprise", **(environment or {}))
    command = [binary, "--port", "0", "--metrics-port", "0", "--data-dir", directory + "/data", "--fsync", "everysec"]
    if threads:
        command += ["--threads", str(threads)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = server.stdout.readline().decode()
        if "port=" not in line:
            raise RuntimeError("tenantd did not start: " + line)
        yield line.split("port=")[1].split()[0], directory
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def bench(port, token, directory, *arguments):
    """Runs tenant-bench against `port` with `arguments`; returns its JSON result."""
    result = directory + "/result.json"
    subprocess.run([BENCH, "--port", port, "--token", token, "--json", result, *map(str, arguments)],
                   check=True, stdout=subprocess.DEVNULL)
    with open(result) as file:
        return json.load(file)
