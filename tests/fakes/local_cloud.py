"""The servers behind the cloud fakes: "creating" a server boots a local droplet from a stand-in for the
provider's Debian 12 image (the droplet image plus Debian's cloud-init, NoCloud datasource), with the user data
the client sent and the registered SSH key as its seed, and its notebooks volume as a real block device (a loop
device over a sparse file) at the path the provider gives it. Its ports are published on 127.0.0.1 only.

One server at a time (the same three local ports each time); volumes outlive servers, as in the cloud.
"""
import io
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import docker
import yaml

from appliance import droplet

IMAGE = "appliance-test/cloud-debian-12"
DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# cloud-init makes the host keys on a cloud image (the droplet image's own key maker goes)
RUN apt-get update && apt-get install -y --no-install-recommends cloud-init locales e2fsprogs \\
 && sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen \\
 && rm -rf /var/lib/apt/lists/* /etc/systemd/system/ssh.service.d/keygen.conf \\
 && printf 'datasource_list: [NoCloud]\\nnetwork: {config: disabled}\\n' > /etc/cloud/cloud.cfg.d/90-local-cloud.cfg
"""
# what each provider's own Debian image configures: DigitalOcean logs in as root, Debian's AMIs as admin
PROVIDER_CONFIG = {
    "digitalocean": {"disable_root": False},
    "aws": {"system_info": {"default_user": {"name": "admin", "lock_passwd": True, "shell": "/bin/bash",
                                             "sudo": ["ALL=(ALL) NOPASSWD:ALL"]}}},
}
VOLUME_MB = 512


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCloud:
    def __init__(self, client, workdir, provider):
        self.client, self.workdir, self.provider = client, Path(workdir), provider
        self.ports = {22: _free_port(), 80: _free_port(), 443: _free_port()}
        self.servers = {}   # server id -> container name
        self.volumes = {}   # volume id -> loop device
        self.log = []       # what happened, in order ("boot", "destroy", "volume", "delete volume")

    def build_image(self):
        base = droplet.build_image(self.client, say=lambda msg: None)
        self.client.images.build(fileobj=io.BytesIO(DOCKERFILE.encode()), tag=IMAGE, buildargs={"BASE_IMAGE": base},
                                 rm=True)

    def volume(self, volume_id):
        """The volume's block device, made (blank) the first time."""
        if volume_id not in self.volumes:
            backing = self.workdir / f"{volume_id}.img"
            with open(backing, "wb") as f:
                f.truncate(VOLUME_MB << 20)
            self.volumes[volume_id] = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                                                     capture_output=True, text=True).stdout.strip()
            self.log.append("volume")
        return self.volumes[volume_id]

    def boot(self, server_id, hostname, user_data, public_keys, devices):
        """Start the server: devices maps volume id -> the path the provider shows it at in the server."""
        name = f"appliance-cloud-{server_id}"
        seed = {"user-data": user_data or "", "meta-data": yaml.safe_dump(
                    {"instance-id": str(server_id), "local-hostname": hostname, "public-keys": list(public_keys)}),
                "provider.cfg": yaml.safe_dump(PROVIDER_CONFIG[self.provider])}
        config = droplet.host_config(
            self.client, self.ports, {f"{name}-docker": "/var/lib/docker"},
            devices=[f"{self.volume(vid)}:{path}:rwm" for vid, path in devices.items()])
        created = self.client.api.create_container(IMAGE, name=name, hostname=hostname, host_config=config,
                                                   ports=list(self.ports), detach=True)
        self.client.api.put_archive(created["Id"], "/", _tar({
            "var/lib/cloud/seed/nocloud/user-data": seed["user-data"],
            "var/lib/cloud/seed/nocloud/meta-data": seed["meta-data"],
            "etc/cloud/cloud.cfg.d/91-provider.cfg": seed["provider.cfg"]}))
        self.client.api.start(created["Id"])
        self.servers[server_id] = name
        self.log.append("boot")

    def container(self, server_id):
        return self.client.containers.get(self.servers[server_id])

    def destroy(self, server_id):
        name = self.servers.pop(server_id, None)
        if name is None:
            return
        try:
            self.client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        try:
            self.client.volumes.get(f"{name}-docker").remove(force=True)
        except docker.errors.NotFound:
            pass
        self.log.append("destroy")

    def delete_volume(self, volume_id):
        device = self.volumes.pop(volume_id, None)
        if device:
            subprocess.run(["losetup", "-d", device], check=True)
            (self.workdir / f"{volume_id}.img").unlink()
            self.log.append("delete volume")

    def close(self):
        for server_id in list(self.servers):
            self.destroy(server_id)
        for volume_id in list(self.volumes):
            self.delete_volume(volume_id)


def _tar(files):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        dirs = set()
        for path, text in files.items():
            parts = path.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, time.time()
                    tar.addfile(info)
            raw = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(raw), 0o600, time.time()
            tar.addfile(info, io.BytesIO(raw))
    return data.getvalue()
