"""Test certificates made with the openssl CLI (Debian's `openssl` package):
a CA, and server or client certificates it signs, as PEM files in a directory
the test owns. P-256 keys, valid two days, serial numbers chosen by the test so
it can tell which certificate a server presents.

    ca = Pki(tmpdir).ca("ca")                      # ca.pem, ca.key
    ca.issue("server", serial=100)                 # server.pem, server.key (localhost, 127.0.0.1)
    ca.issue("client", serial=7, client=True)      # client.pem, client.key
"""

import os
import subprocess


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


class Ca:
    def __init__(self, directory, name):
        self.dir = directory
        self.name = name
        self.cert = os.path.join(directory, f"{name}.pem")
        self.key = os.path.join(directory, f"{name}.key")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "2",
                 "-subj", f"/CN=attnserve test {name}", cwd=directory)

    def issue(self, name, serial, client=False, key_from=None):
        """Writes <name>.pem and <name>.key signed by this CA; returns their
        paths (cert, key). key_from: reuse that key file (a new certificate for
        the same key) instead of making a new one."""
        cert = os.path.join(self.dir, f"{name}.pem")
        key = key_from or os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w", encoding="ascii") as f:
            f.write("basicConstraints=CA:FALSE\n")
            if client:
                f.write("extendedKeyUsage=clientAuth\n")
            else:
                f.write("extendedKeyUsage=serverAuth\n")
                f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        if key_from:
            _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}",
                     cwd=self.dir)
        else:
            _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                     "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=self.dir)
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                 "-set_serial", str(serial), "-days", "2", "-out", cert, "-extfile", ext,
                 cwd=self.dir)
        return cert, key


class Pki:
    def __init__(self, directory):
        self.dir = directory

    def ca(self, name):
        return Ca(self.dir, name)


def read(path):
    with open(path, "rb") as f:
        return f.read()


if __name__ == "__main__":
    # For tests in other languages: `pki.py DIR` writes the set the Python tests
    # use: ca.pem/.key signing server.pem/.key (localhost, 127.0.0.1) and
    # client.pem/.key, and other.pem/.key signing rogue.pem/.key (a client
    # certificate from a CA the server does not trust).
    import sys

    _pki = Pki(sys.argv[1])
    _ca = _pki.ca("ca")
    _ca.issue("server", serial=100)
    _ca.issue("client", serial=7, client=True)
    _pki.ca("other").issue("rogue", serial=9, client=True)
