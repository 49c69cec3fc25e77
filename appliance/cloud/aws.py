"""AWS EC2 through boto3, with the standard credential chain (environment, ~/.aws/credentials and config,
SSO, instance role): nothing is read or kept here.

Test-only: $APPLIANCE_TEST_AWS_ENDPOINT points boto3 at a local moto server.
"""
import base64
import hashlib
import os

from ..errors import CloudError
from . import Server

DEBIAN_OWNER = "136693071363"   # Debian's AWS account (wiki.debian.org/Cloud/AmazonEC2Image)
DEBIAN_IMAGES = "debian-12-amd64-*"
ENDPOINT_ENV = "APPLIANCE_TEST_AWS_ENDPOINT"
DEVICE = "/dev/sdf"
CREDENTIALS = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
               "ExpiredToken", "OptInRequired"}
QUOTA = {"InstanceLimitExceeded", "VcpuLimitExceeded", "VolumeLimitExceeded", "MaxSpotInstanceCountExceeded",
         "SecurityGroupLimitExceeded", "InsufficientInstanceCapacity", "SnapshotLimitExceeded"}


class AWS:
    title = "AWS"
    login = "admin"        # the Debian AMI's SSH login (sudo)
    running = "running"

    def __init__(self, cfg):
        import boto3.session
        self.region, self.instance_type, self.volume_gb = cfg.region or "eu-central-1", cfg.instance_type, cfg.volume_gb
        self.ssh_port, self.http_port, self.https_port = cfg.ssh_port, cfg.http_port, cfg.https_port
        self.ssh_from, self.user = cfg.ssh_from, cfg.user
        session = boto3.session.Session()  # a session of its own: nothing cached between runs
        known = {r for partition in ("aws", "aws-us-gov", "aws-cn")
                 for r in session.get_available_regions("ec2", partition_name=partition)}
        if self.region not in known:  # botocore's own list: an unknown name would only fail to connect
            raise CloudError(f"unknown AWS region {self.region!r} (e.g. eu-central-1, us-east-1)")
        self.ec2 = session.client("ec2", region_name=self.region, endpoint_url=os.environ.get(ENDPOINT_ENV) or None)

    def call(self, operation, **params):
        """One EC2 call; its failures as one line."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, EndpointConnectionError
        try:
            return getattr(self.ec2, operation)(**params)
        except NoCredentialsError:
            raise CloudError("no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                             "or run `aws configure`") from None
        except EndpointConnectionError:
            raise CloudError(f"cannot reach EC2 in the region {self.region} (is it a region name?)") from None
        except ClientError as exc:
            code, message = exc.response["Error"].get("Code", ""), exc.response["Error"].get("Message", "")
            if code in CREDENTIALS:
                raise CloudError(f"AWS refused the credentials ({code}): {message}") from None
            if code in QUOTA:
                raise CloudError(f"AWS quota exceeded ({code}): {message}") from None
            raise CloudError(f"AWS refused {operation} ({code}): {message}") from None
        except BotoCoreError as exc:
            raise CloudError(f"AWS: {exc}") from None

    @staticmethod
    def tags(name, kind, suffix=""):
        return [{"ResourceType": kind, "Tags": [{"Key": "appliance", "Value": name},
                                                {"Key": "Name", "Value": f"appliance-{name}{suffix}"}]}]

    # the operator's SSH key: named after its fingerprint, so the same key is found again
    @staticmethod
    def key_name(pubkey):
        return "appliance-" + hashlib.sha256(base64.b64decode(pubkey.split()[1])).hexdigest()[:20]

    def find_key(self, pubkey):
        found = self.call("describe_key_pairs", Filters=[{"Name": "key-name", "Values": [self.key_name(pubkey)]}])
        return found["KeyPairs"][0] if found["KeyPairs"] else None

    def create_key(self, pubkey):
        return self.call("import_key_pair", KeyName=self.key_name(pubkey), PublicKeyMaterial=pubkey.encode())

    def delete_key(self, key):
        self.call("delete_key_pair", KeyName=key["KeyName"])

    def key_in_use(self, key):
        found = self.call("describe_instances", Filters=[
            {"Name": "key-name", "Values": [key["KeyName"]]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
        return any(r["Instances"] for r in found["Reservations"])

    # the security group
    def find_firewall(self, name):
        found = self.call("describe_security_groups", Filters=[{"Name": "group-name", "Values": [f"appliance-{name}"]}])
        return found["SecurityGroups"][0] if found["SecurityGroups"] else None

    def create_firewall(self, name):
        group = self.call("create_security_group", GroupName=f"appliance-{name}",
                          Description=f"SSH, HTTP and HTTPS of the appliance {name}",
                          TagSpecifications=self.tags(name, "security-group"))
        everyone = {"IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
        ssh_from = everyone
        if self.ssh_from:
            ssh_from = ({"Ipv6Ranges": [{"CidrIpv6": self.ssh_from}]} if ":" in self.ssh_from
                        else {"IpRanges": [{"CidrIp": self.ssh_from}]})
        rules = [{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **sources}
                 for port, sources in ((self.ssh_port, ssh_from), (self.http_port, everyone),
                                       (self.https_port, everyone))]
        self.call("authorize_security_group_ingress", GroupId=group["GroupId"], IpPermissions=rules)
        return group

    def delete_firewall(self, group):
        self.call("delete_security_group", GroupId=group["GroupId"])

    # the notebooks volume (EBS, in the availability zone the instance then goes to)
    def find_volume(self, name):
        found = self.call("describe_volumes", Filters=[{"Name": "tag:appliance", "Values": [name]}])
        return found["Volumes"][0] if found["Volumes"] else None

    def create_volume(self, name):
        zones = self.call("describe_availability_zones",
                          Filters=[{"Name": "state", "Values": ["available"]}])["AvailabilityZones"]
        if not zones:
            raise CloudError(f"the region {self.region} has no available zone")
        return self.call("create_volume", AvailabilityZone=sorted(z["ZoneName"] for z in zones)[0],
                         Size=self.volume_gb, VolumeType="gp3", TagSpecifications=self.tags(name, "volume", "-notebooks"))

    def volume_id(self, volume):
        return volume["VolumeId"]

    def volume_device(self, volume):
        """Where the EBS volume shows up on a Nitro instance (NVMe, named after the volume id)."""
        return "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + volume["VolumeId"].replace("-", "")

    def _volume_state(self, volume):
        found = self.call("describe_volumes", Filters=[{"Name": "volume-id", "Values": [volume["VolumeId"]]}])
        return found["Volumes"][0]["State"] if found["Volumes"] else "deleted"

    def delete_volume(self, volume, say):
        from . import wait_for
        wait_for(f"Waiting for the volume {volume['VolumeId']} to be detached",
                 lambda: (self._volume_state(volume) in ("available", "deleted"), self._volume_state(volume)), say)
        self.call("delete_volume", VolumeId=volume["VolumeId"])

    # the instance
    def image(self):
        """The newest official Debian 12 AMI (amd64) of the region, looked up by owner and name."""
        found = self.call("describe_images", Owners=[DEBIAN_OWNER], Filters=[
            {"Name": "name", "Values": [DEBIAN_IMAGES]}, {"Name": "architecture", "Values": ["x86_64"]},
            {"Name": "state", "Values": ["available"]}])["Images"]
        if not found:
            raise CloudError(f"no Debian 12 image ({DEBIAN_IMAGES} by {DEBIAN_OWNER}) in {self.region}")
        return max(found, key=lambda i: i["CreationDate"])["ImageId"]

    @staticmethod
    def _server(instance):
        name = next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == "appliance"), "")
        return Server("aws", instance["InstanceId"], name, instance["Placement"]["AvailabilityZone"][:-1],
                      instance.get("PublicIpAddress"), instance["State"]["Name"])

    def _instances(self, filters):
        found = self.call("describe_instances", Filters=filters)
        return [i for r in found["Reservations"] for i in r["Instances"]]

    def find_server(self, name):
        listed = self._instances([{"Name": "tag:appliance", "Values": [name]}, {
            "Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
        return self._server(listed[0]) if listed else None

    def create_server(self, name, pubkey, volume, user_data):
        group = self.find_firewall(name)
        found = self.call(
            "run_instances", ImageId=self.image(), InstanceType=self.instance_type, MinCount=1, MaxCount=1,
            KeyName=self.key_name(pubkey), SecurityGroupIds=[group["GroupId"]], UserData=user_data,
            Placement={"AvailabilityZone": volume["AvailabilityZone"]},
            # IMDSv2 only, one hop: a container on the server cannot reach the metadata (and the user data)
            MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
            TagSpecifications=self.tags(name, "instance"))
        return self._server(found["Instances"][0])

    def get_server(self, server_id):
        listed = self._instances([{"Name": "instance-id", "Values": [server_id]}])
        if not listed:
            raise CloudError(f"the instance {server_id} disappeared while it was being created")
        return self._server(listed[0])

    def attach(self, server, volume, say):
        from . import wait_for
        if self._volume_state(volume) == "in-use":
            return
        self.call("attach_volume", VolumeId=volume["VolumeId"], InstanceId=server.id, Device=DEVICE)
        wait_for(f"Attaching the volume {volume['VolumeId']}",
                 lambda: (self._volume_state(volume) == "in-use", self._volume_state(volume)), say)

    def delete_server(self, server):
        self.call("terminate_instances", InstanceIds=[server.id])

    def server_gone(self, server):
        listed = self._instances([{"Name": "instance-id", "Values": [server.id]}])
        state = listed[0]["State"]["Name"] if listed else "terminated"
        return state == "terminated", state

    # EBS snapshots
    def create_snapshot(self, name, volume, snap_name):
        self.call("create_snapshot", VolumeId=volume["VolumeId"], Description=snap_name,
                  TagSpecifications=[{"ResourceType": "snapshot", "Tags": [
                      {"Key": "appliance", "Value": name}, {"Key": "Name", "Value": snap_name}]}])

    def snapshots(self, name):
        found = self.call("describe_snapshots", OwnerIds=["self"], Filters=[{"Name": "tag:appliance", "Values": [name]}])
        return [{"id": s["SnapshotId"], "name": s.get("Description", ""), "created": s["StartTime"].isoformat(),
                 "size_gb": s["VolumeSize"]} for s in found["Snapshots"]]

    def delete_snapshot(self, snap):
        self.call("delete_snapshot", SnapshotId=snap["id"])
