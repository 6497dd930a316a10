"""Dummy .deb packages named and versioned like Ubuntu's NVIDIA 550 server driver, for the pinning tests.

They hold nothing but a README, so installing them changes nothing but dpkg's database: what
install.sh queries to pin the driver (no loaded kernel module needed), and what `appliance health`
compares with the pin. Built inside the sandbox with `dpkg-deb --build` (no network).
"""

from __future__ import annotations

import shlex

PACKAGES = ("nvidia-driver-550", "libnvidia-compute-550", "nvidia-utils-550")
PINNED = "550.127.05"  # what is installed first, and pinned
NEWER = "550.144.03"  # what the operator upgrades to later


def package_version(version: str) -> str:
    return f"{version}-0ubuntu1"


def control(package: str, version: str, arch: str) -> str:
    lines = [f"Package: {package}", f"Version: {package_version(version)}", f"Architecture: {arch}",
             "Maintainer: appliance tests <tests@example.invalid>", "Section: non-free/libs", "Priority: optional"]
    if package == "nvidia-driver-550":
        lines.append("Depends: " + ", ".join(f"{dep} (= {package_version(version)})" for dep in PACKAGES[1:]))
    lines.append(f"Description: dummy {package} {version} for the appliance's pinning tests")
    return "\n".join(lines) + "\n"


def build_script(version: str, folder: str, arch: str = "amd64") -> str:
    """A shell script that builds the three packages at `version` into `folder`."""
    steps = ["set -e", f"mkdir -p {shlex.quote(folder)}"]
    for package in PACKAGES:
        root = f"{folder}/build/{package}"
        deb = f"{folder}/{package}_{package_version(version)}_{arch}.deb"
        steps += [
            f"mkdir -p {root}/DEBIAN {root}/usr/share/doc/{package}",
            f"printf %s {shlex.quote(control(package, version, arch))} > {root}/DEBIAN/control",
            f"echo 'dummy NVIDIA driver {version}' > {root}/usr/share/doc/{package}/README",
            f"dpkg-deb --root-owner-group --build {root} {deb} >/dev/null",
        ]
    steps.append(f"rm -rf {folder}/build")
    return "\n".join(steps)


def build(box, version: str) -> str:
    """Build the packages at `version` inside the sandbox; returns the folder holding the .debs."""
    arch = box.run("dpkg", "--print-architecture").stdout.strip()
    folder = f"/var/tmp/fake-nvidia-{version}"
    box.sh(build_script(version, folder, arch))
    return folder
