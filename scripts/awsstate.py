#!/usr/bin/env python3
"""Tiny boto3 helper for the lbmanager demo: create fixtures in, and print state from,
the fake AWS (moto) at $MOTO_URL.

  awsstate.py create-elb NAME REGION    Classic ELB, one HTTP:80 listener, AZ REGIONa
  awsstate.py create-zone DOMAIN        public hosted zone; prints the bare id (no /hostedzone/)
  awsstate.py elb-instances NAME REGION registered instance ids, sorted, one per line
  awsstate.py records ZONE_ID FQDN      "TYPE TTL v1,v2" lines (A and AAAA of FQDN), sorted

Credentials: any values work with moto; they default to "demo" if unset.
"""
import os
import sys
import time
import uuid

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def _endpoint():
    url = os.environ.get("MOTO_URL")
    if not url:
        sys.exit("awsstate.py: MOTO_URL is not set")
    return url


def _client(service, region):
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=_endpoint(),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "demo"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "demo"),
    )


def create_elb(name, region):
    elb = _client("elb", region)
    elb.create_load_balancer(
        LoadBalancerName=name,
        Listeners=[{
            "Protocol": "HTTP",
            "LoadBalancerPort": 80,
            "InstanceProtocol": "HTTP",
            "InstancePort": 80,
        }],
        AvailabilityZones=[region + "a"],
    )
    print(name)


def create_zone(domain):
    r53 = _client("route53", "us-east-1")
    resp = r53.create_hosted_zone(Name=domain, CallerReference="lbmanager-demo-%s-%s" % (time.time(), uuid.uuid4()))
    zone_id = resp["HostedZone"]["Id"]
    if zone_id.startswith("/hostedzone/"):
        zone_id = zone_id[len("/hostedzone/"):]
    print(zone_id)


def elb_instances(name, region):
    elb = _client("elb", region)
    resp = elb.describe_load_balancers(LoadBalancerNames=[name])
    ids = [i["InstanceId"] for lb in resp["LoadBalancerDescriptions"] for i in lb.get("Instances", [])]
    # Duplicates are printed as they are: moto stores a re-registered id twice,
    # so a duplicate here means the daemon registered something it already had.
    for instance_id in sorted(ids):
        print(instance_id)


def _norm(name):
    name = name.lower()
    return name if name.endswith(".") else name + "."


def records(zone_id, fqdn):
    r53 = _client("route53", "us-east-1")
    want = _norm(fqdn)
    lines = []
    kwargs = {"HostedZoneId": zone_id, "StartRecordName": want}
    while True:
        resp = r53.list_resource_record_sets(**kwargs)
        for rrset in resp["ResourceRecordSets"]:
            if _norm(rrset["Name"]) != want or rrset["Type"] not in ("A", "AAAA"):
                continue
            values = sorted(rr["Value"] for rr in rrset.get("ResourceRecords", []))
            lines.append("%s %s %s" % (rrset["Type"], rrset.get("TTL", "-"), ",".join(values)))
        if not resp.get("IsTruncated"):
            break
        kwargs["StartRecordName"] = resp["NextRecordName"]
        kwargs["StartRecordType"] = resp["NextRecordType"]
        if _norm(resp["NextRecordName"]) != want:
            break
    for line in sorted(lines):
        print(line)


COMMANDS = {
    "create-elb": (create_elb, 2),
    "create-zone": (create_zone, 1),
    "elb-instances": (elb_instances, 2),
    "records": (records, 2),
}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS or len(argv) - 2 != COMMANDS[argv[1]][1]:
        sys.stderr.write(__doc__)
        return 2
    func, _ = COMMANDS[argv[1]]
    try:
        func(*argv[2:])
    except (ClientError, BotoCoreError) as err:
        sys.stderr.write("awsstate.py %s: %s\n" % (argv[1], err))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
