#!/usr/bin/env python3
"""An independent AWS client (boto3) for the cloud tests against moto:
sets up what a target names, reads snapshot blocks back through the EBS
direct API (GetSnapshotBlock), and lists what exists.

  moto_client.py setup URL            -> {"subnet", "security_group"}
  moto_client.py blocks URL SNAP OUT  -> writes the snapshot's blocks into OUT
  moto_client.py state URL            -> instances, volumes, snapshots, images
  moto_client.py s3get URL BUCKET KEY OUT  (keys from AWS_* variables)
                                      -> writes the object into OUT
"""
import json
import sys

import boto3

REGION = "us-east-1"


def client(service, url):
    return boto3.client(service, endpoint_url=url, region_name=REGION,
                        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


def main():
    cmd, url = sys.argv[1], sys.argv[2]
    if cmd == "s3get":
        import os
        from botocore.config import Config
        s3 = boto3.client("s3", endpoint_url=url, region_name=os.environ["AWS_REGION"],
                          config=Config(s3={"addressing_style": "path"}))
        obj = s3.get_object(Bucket=sys.argv[3], Key=sys.argv[4])
        with open(sys.argv[5], "wb") as f:
            for c in obj["Body"].iter_chunks(1 << 20):
                f.write(c)
        print(json.dumps({"size": obj["ContentLength"]}))
        return
    ec2 = client("ec2", url)
    if cmd == "setup":
        ec2.create_key_pair(KeyName="admin-key")
        subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        sg = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
        print(json.dumps({"subnet": subnet, "security_group": sg}))
    elif cmd == "blocks":
        snap, out = sys.argv[3], sys.argv[4]
        ebs = client("ebs", url)
        listed = ebs.list_snapshot_blocks(SnapshotId=snap)
        n = 0
        with open(out, "wb") as f:
            for b in listed["Blocks"]:
                got = ebs.get_snapshot_block(SnapshotId=snap, BlockIndex=b["BlockIndex"],
                                             BlockToken=b["BlockToken"])
                data = got["BlockData"].read()
                f.seek(b["BlockIndex"] * 524288)
                f.write(data)
                n += 1
        print(json.dumps({"blocks": n, "block_size": 524288}))
    elif cmd == "state":
        res = ec2.describe_instances()["Reservations"]
        insts = [{"id": i["InstanceId"], "state": i["State"]["Name"], "type": i["InstanceType"]}
                 for r in res for i in r["Instances"]]
        vols = [{"id": v["VolumeId"], "state": v["State"], "snapshot": v.get("SnapshotId", ""),
                 "attachments": [a["InstanceId"] for a in v.get("Attachments", [])]}
                for v in ec2.describe_volumes()["Volumes"]]
        snaps = [s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
                 if (s.get("Description") or "").startswith("lifeboat ")]
        imgs = [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]]
        print(json.dumps({"instances": insts, "volumes": vols, "snapshots": snaps, "images": imgs}))


if __name__ == "__main__":
    main()
