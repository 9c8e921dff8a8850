# A connection plugin for the project's systemd test hosts (tests/harness/host): every command
# runs inside the host with `host exec NAME -- /bin/sh -c CMD` (nsenter into all of its
# namespaces, as root), files go in and out through `cat` on the host's side. Only for the test
# suite (tests/ansible_play.rs), where the hosts are not reachable over SSH.
from __future__ import annotations

DOCUMENTATION = """
name: kr_testhost
short_description: run inside a kibana-rollback test host (tests/harness/host exec)
description:
  - Commands run as root inside the test host named by the inventory host's C(ansible_host)
    (or its inventory name), through C(tests/harness/host exec).
author: kibana-rollback
options:
  remote_addr:
    description: the test host's name
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
  harness:
    description: path of tests/harness/host
    env:
      - name: KR_HOST_HARNESS
    vars:
      - name: kr_host_harness
"""

import os
import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

_DEFAULT_HARNESS = os.path.join(os.path.dirname(__file__), "..", "..", "harness", "host")


class Connection(ConnectionBase):
    transport = "kr_testhost"
    has_pipelining = True

    def _harness(self):
        return self.get_option("harness") or os.path.abspath(_DEFAULT_HARNESS)

    def _host(self):
        return self.get_option("remote_addr")

    def _connect(self):
        if not self._connected:
            out = subprocess.run([self._harness(), "env", self._host()], capture_output=True)
            if out.returncode != 0:
                raise AnsibleConnectionFailure(
                    "test host %s is not running: %s" % (self._host(), out.stderr.decode(errors="replace"))
                )
            self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        display.vvv("EXEC in %s: %s" % (self._host(), cmd), host=self._host())
        p = subprocess.Popen(
            [self._harness(), "exec", self._host(), "--", "/bin/sh", "-c", cmd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = p.communicate(in_data)
        return p.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv("PUT %s TO %s:%s" % (in_path, self._host(), out_path), host=self._host())
        with open(in_path, "rb") as f:
            rc, _, err = self.exec_command("cat > %s" % shlex.quote(out_path), in_data=f.read())
        if rc != 0:
            raise AnsibleError("copying %s to %s:%s failed: %s" % (in_path, self._host(), out_path, err))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        rc, data, err = self.exec_command("cat %s" % shlex.quote(in_path))
        if rc != 0:
            raise AnsibleError("fetching %s:%s failed: %s" % (self._host(), in_path, err))
        with open(out_path, "wb") as f:
            f.write(data)

    def close(self):
        self._connected = False
