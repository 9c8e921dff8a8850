# kibana-rollback's dnf plugin (dnf 4): before the rpm transaction runs (pre_transaction, after
# the download and the confirmation), every package the transaction installs is handed to
# `kibana-rollback package-hook dnf` as a line "NAME INSTALLED NEW" ("-": not installed). That
# command makes sure a rollback point exists before the kibana package changes version (README
# "The package hook"); a non-zero exit stops the transaction before rpm changes anything.
# `command` in kibana_rollback.conf names another command line. With the binary gone (the
# package erased, this file left behind) nothing is checked.
import os
import shlex
import subprocess

import dnf
import dnf.exceptions
import dnf.transaction

INBOUND = (
    dnf.transaction.PKG_INSTALL,
    dnf.transaction.PKG_UPGRADE,
    dnf.transaction.PKG_DOWNGRADE,
    dnf.transaction.PKG_REINSTALL,
)


class KibanaRollback(dnf.Plugin):
    name = "kibana_rollback"

    def __init__(self, base, cli):
        super(KibanaRollback, self).__init__(base, cli)
        self.command = ["/usr/bin/kibana-rollback", "package-hook", "dnf"]

    def config(self):
        conf = self.read_config(self.base.conf)
        if conf.has_section("main") and conf.has_option("main", "command"):
            self.command = shlex.split(conf.get("main", "command"))

    def pre_transaction(self):
        if not os.path.exists(self.command[0]):
            return
        installed = self.base.sack.query().installed()
        lines = []
        for tsi in self.base.transaction:
            if tsi.action not in INBOUND:
                continue
            pkg = tsi.pkg
            old = installed.filter(name=pkg.name).run()
            lines.append("%s %s %s" % (pkg.name, old[0].v if old else "-", pkg.v))
        if not lines:
            return
        try:
            done = subprocess.run(self.command, input="\n".join(lines) + "\n",
                                  universal_newlines=True)
        except OSError as e:
            raise dnf.exceptions.Error("kibana-rollback: cannot run %s: %s" % (self.command[0], e))
        if done.returncode != 0:
            raise dnf.exceptions.Error(
                "kibana-rollback: the package hook refused the transaction (exit %d, its reason above)"
                % done.returncode)
