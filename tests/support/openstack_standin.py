#!/usr/bin/env python3
"""A STAND-IN for the OpenStack APIs lifeboat's cloud restore calls — not
OpenStack. No lightweight third-party emulator of Keystone, Glance, Nova,
Neutron and Cinder exists (DevStack is a whole cloud), so the tests use
this, written to the OpenStack API reference for exactly these calls:

  Keystone v3  POST /identity/v3/auth/tokens (password, application_credential)
  Glance v2    POST /image/v2/images, GET/DELETE /image/v2/images/{id},
               PUT /image/v2/images/{id}/file (checksum = MD5, os_hash sha512)
  Nova 2.1     GET /compute/v2.1/flavors/detail, GET os-keypairs/{name},
               POST/GET/DELETE servers[/{id}], POST servers/{id}/os-volume_attachments,
               DELETE servers/{id}/os-volume_attachments/{vol},
               POST servers/{id}/remote-consoles (microversion 2.6)
  Neutron      GET /network/v2.0/networks, GET /network/v2.0/security-groups
  Cinder v3    POST/GET/DELETE /volume/v3/{project}/volumes[/{id}]

Uploaded image bytes are kept in DIR (so a test can compare them with the
backup), volumes created from an image copy them; an attachment goes
through reserved and attaching (with the slow-attach fault, for 40 polls)
before in-use, and a volume in any of those cannot be deleted. Faults a real cloud
produces are switched on with POST /_standin/fault {"fault": NAME}:
quota, quota-1 (room for one server), server-error, image-stuck, checksum, drop-upload, slow-build,
slow-attach, slow-console (the console URL is answered after 60 s, like a
Nova whose console proxy hangs).
GET /_standin/state lists images, servers and volumes with the SHA-256 of
their bytes.

Usage: openstack_standin.py DIR  (prints "listening PORT" on stdout)
"""
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USER, PASSWORD, PROJECT = "admin", "s3cret-pw", "dr"
APP_ID, APP_SECRET = "app-cred-1", "app-s3cret"
PROJECT_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
FLAVORS = [
    {"id": "1", "name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1},
    {"id": "2", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
]
NETWORKS = [{"id": "5d6e7f80-net0-4000-8000-000000000001", "name": "dr-net", "status": "ACTIVE"}]
SECGROUPS = [{"id": "sg-0001", "name": "default"}]
KEYPAIRS = {"admin-key": {"name": "admin-key", "fingerprint": "aa:bb"}}

lock = threading.Lock()
state = {"tokens": set(), "images": {}, "servers": {}, "volumes": {}, "faults": set(),
         "uploads": 0, "polls": {}, "console_requests": 0}
DIR = "."
PORT = 0


def sha256_file(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
    except FileNotFoundError:
        return None
    return h.hexdigest()


def fault(name):
    return name in state["faults"]


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def err(self, code, kind, message):
        self.reply(code, {kind: {"code": code, "message": message}})

    def body_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > 1 << 20:
            return None
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def authed(self):
        tok = self.headers.get("X-Auth-Token")
        if tok in state["tokens"]:
            return True
        self.reply(401, {"error": {"code": 401, "title": "Unauthorized",
                                   "message": "The request you have made requires authentication."}})
        return False

    def base(self):
        return f"http://127.0.0.1:{PORT}"

    # ---------------------------------------------------------------- routes
    def do_POST(self):
        p = self.path.split("?")[0].rstrip("/")
        if p == "/identity/v3/auth/tokens":
            return self.keystone()
        if p == "/_standin/fault":
            b = self.body_json() or {}
            with lock:
                if b.get("fault"):
                    state["faults"].add(b["fault"])
                else:
                    state["faults"].clear()
            return self.reply(200, {"faults": sorted(state["faults"])})
        if not self.authed():
            return
        if p == "/image/v2/images":
            return self.create_image()
        if p == "/compute/v2.1/servers":
            return self.create_server()
        parts = p.split("/")
        if p.startswith("/compute/v2.1/servers/") and parts[-1] == "os-volume_attachments":
            return self.attach(parts[-2])
        if p.startswith("/compute/v2.1/servers/") and parts[-1] == "remote-consoles":
            sid = parts[-2]
            # Read the request's body: left unread, it would be taken for
            # the next request on this kept-alive connection.
            self.body_json()
            with lock:
                state["console_requests"] += 1
            if fault("slow-console"):
                time.sleep(60)
            if sid not in state["servers"]:
                return self.err(404, "itemNotFound", f"Instance {sid} could not be found.")
            return self.reply(200, {"remote_console": {
                "protocol": "vnc", "type": "novnc",
                "url": f"{self.base()}/vnc_auto.html?path=%3Ftoken%3D{uuid.uuid4()}"}})
        if p == f"/volume/v3/{PROJECT_ID}/volumes":
            return self.create_volume()
        self.err(404, "itemNotFound", f"no route for POST {p}")

    def do_GET(self):
        p = self.path.split("?")[0].rstrip("/")
        q = self.path.split("?")[1] if "?" in self.path else ""
        if p == "/_standin/state":
            with lock:
                out = {
                    "images": {i: {"status": v["status"], "size": v.get("size"), "name": v["name"],
                                   "sha256": sha256_file(os.path.join(DIR, "img-" + i))}
                               for i, v in state["images"].items()},
                    "servers": {i: {"status": v["status"], "name": v["name"], "image": v["imageRef"],
                                    "volumes": v["volumes"]} for i, v in state["servers"].items()},
                    "volumes": {i: {"status": v["status"], "size": v["size"],
                                    "sha256": sha256_file(os.path.join(DIR, "vol-" + i))}
                                for i, v in state["volumes"].items()},
                    "uploads": state["uploads"],
                    "console_requests": state["console_requests"],
                }
            return self.reply(200, out)
        if not self.authed():
            return
        if p == "/compute/v2.1/flavors/detail":
            return self.reply(200, {"flavors": FLAVORS})
        if p.startswith("/compute/v2.1/os-keypairs/"):
            name = p.rsplit("/", 1)[1]
            if name in KEYPAIRS:
                return self.reply(200, {"keypair": KEYPAIRS[name]})
            return self.err(404, "itemNotFound", f"Keypair {name} not found for user admin")
        if p == "/network/v2.0/networks":
            return self.reply(200, {"networks": NETWORKS})
        if p == "/network/v2.0/security-groups":
            name = q.split("name=")[1].split("&")[0] if "name=" in q else None
            return self.reply(200, {"security_groups": [g for g in SECGROUPS if name in (None, g["name"])]})
        if p.startswith("/image/v2/images/"):
            iid = p.rsplit("/", 1)[1]
            with lock:
                img = state["images"].get(iid)
                if img is None:
                    return self.err(404, "itemNotFound", f"No image found with ID {iid}")
                return self.reply(200, self.image_view(iid, img))
        if p.startswith("/compute/v2.1/servers/"):
            return self.show_server(p.rsplit("/", 1)[1])
        if p.startswith(f"/volume/v3/{PROJECT_ID}/volumes/"):
            return self.show_volume(p.rsplit("/", 1)[1])
        self.err(404, "itemNotFound", f"no route for GET {p}")

    def do_PUT(self):
        p = self.path.split("?")[0].rstrip("/")
        if p.startswith("/image/v2/images/") and p.endswith("/file"):
            if not self.authed():
                return
            return self.upload(p.split("/")[-2])
        if p == "/_standin/plain":
            # A plain upload to the same server, for the benchmark's
            # baseline: stored and hashed like an image upload.
            md5, sha = hashlib.md5(), hashlib.sha512()
            with open(os.path.join(DIR, "plain"), "wb") as f:
                def sink(b):
                    md5.update(b)
                    sha.update(b)
                    f.write(b)
                n = self.read_body(sink)
            return self.reply(200, {"bytes": n, "checksum": md5.hexdigest()})
        self.err(404, "itemNotFound", f"no route for PUT {p}")

    def do_DELETE(self):
        p = self.path.split("?")[0].rstrip("/")
        if not self.authed():
            return
        parts = p.split("/")
        with lock:
            if p.startswith("/image/v2/images/"):
                iid = parts[-1]
                if state["images"].pop(iid, None) is None:
                    return self.err(404, "itemNotFound", f"No image found with ID {iid}")
                try:
                    os.unlink(os.path.join(DIR, "img-" + iid))
                except FileNotFoundError:
                    pass
                return self.reply(204)
            if p.startswith("/compute/v2.1/servers/") and "os-volume_attachments" in parts:
                sid, vid = parts[-3], parts[-1]
                srv, vol = state["servers"].get(sid), state["volumes"].get(vid)
                if srv is None or vol is None or vid not in srv["volumes"]:
                    return self.err(404, "itemNotFound", "attachment not found")
                srv["volumes"].remove(vid)
                vol["status"], vol["attachments"] = "available", []
                return self.reply(202)
            if p.startswith("/compute/v2.1/servers/"):
                sid = parts[-1]
                srv = state["servers"].pop(sid, None)
                if srv is None:
                    return self.err(404, "itemNotFound", f"Instance {sid} could not be found.")
                # Nova detaches what the server had, and ends attachments
                # still in progress.
                for vid in srv["volumes"]:
                    if vid in state["volumes"]:
                        state["volumes"][vid]["status"] = "available"
                        state["volumes"][vid]["attachments"] = []
                        state["volumes"][vid].pop("pending", None)
                return self.reply(204)
            if p.startswith(f"/volume/v3/{PROJECT_ID}/volumes/"):
                vid = parts[-1]
                vol = state["volumes"].get(vid)
                if vol is None:
                    return self.err(404, "itemNotFound", f"Volume {vid} could not be found.")
                if vol["status"] in ("in-use", "reserved", "attaching", "detaching"):
                    return self.err(400, "badRequest",
                                    "Invalid volume: Volume status must be available or error or "
                                    "error_restoring or error_extending or error_managing and must "
                                    "not be migrating, attached, belong to a group, have snapshots "
                                    "or be disassociated from snapshots after volume transfer.")
                state["volumes"].pop(vid)
                try:
                    os.unlink(os.path.join(DIR, "vol-" + vid))
                except FileNotFoundError:
                    pass
                return self.reply(202)
        self.err(404, "itemNotFound", f"no route for DELETE {p}")

    # ------------------------------------------------------------- keystone
    def keystone(self):
        b = self.body_json() or {}
        ident = b.get("auth", {}).get("identity", {})
        methods = ident.get("methods", [])
        ok = False
        if methods == ["password"]:
            u = ident.get("password", {}).get("user", {})
            scope = b.get("auth", {}).get("scope", {}).get("project", {})
            ok = (u.get("name") == USER and u.get("password") == PASSWORD
                  and u.get("domain", {}).get("name") == "Default" and scope.get("name") == PROJECT)
        elif methods == ["application_credential"]:
            a = ident.get("application_credential", {})
            ok = a.get("id") == APP_ID and a.get("secret") == APP_SECRET
        if not ok:
            return self.reply(401, {"error": {"code": 401, "title": "Unauthorized",
                                              "message": "The request you have made requires authentication."}})
        tok = uuid.uuid4().hex
        with lock:
            state["tokens"].add(tok)
        ep = lambda t, path: {"type": t, "name": t, "endpoints": [
            {"interface": "public", "region": "RegionOne", "region_id": "RegionOne",
             "url": self.base() + path}]}
        catalog = [ep("identity", "/identity/v3"), ep("image", "/image"),
                   ep("compute", "/compute/v2.1"), ep("network", "/network"),
                   ep("volumev3", f"/volume/v3/{PROJECT_ID}")]
        self.reply(201, {"token": {"methods": methods, "project": {"id": PROJECT_ID, "name": PROJECT},
                                   "catalog": catalog, "expires_at": "2099-01-01T00:00:00Z"}},
                   {"X-Subject-Token": tok})

    # ---------------------------------------------------------------- glance
    def image_view(self, iid, img):
        v = {"id": iid, "name": img["name"], "status": img["status"], "disk_format": img["disk_format"],
             "container_format": img["container_format"], "visibility": img["visibility"],
             "size": img.get("size"), "checksum": img.get("checksum"),
             "os_hash_algo": img.get("os_hash_algo"), "os_hash_value": img.get("os_hash_value"),
             "min_disk": img.get("min_disk", 0), "file": f"/v2/images/{iid}/file"}
        v.update(img.get("extra", {}))
        return v

    def create_image(self):
        b = self.body_json()
        if b is None:
            return self.err(400, "badRequest", "Malformed JSON")
        if b.get("disk_format") not in ("raw", "qcow2") or b.get("container_format") != "bare":
            return self.err(400, "badRequest", "Invalid disk or container format")
        iid = str(uuid.uuid4())
        known = {"name", "disk_format", "container_format", "visibility", "min_disk", "tags"}
        with lock:
            state["images"][iid] = {
                "name": b.get("name", ""), "status": "queued", "disk_format": b["disk_format"],
                "container_format": "bare", "visibility": b.get("visibility", "shared"),
                "min_disk": b.get("min_disk", 0),
                "extra": {k: v for k, v in b.items() if k not in known}}
            img = state["images"][iid]
        self.reply(201, self.image_view(iid, img))

    def read_body(self, sink, limit=None):
        """Reads a Content-Length or chunked body into sink (a callable)."""
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(100)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline(100)
                    break
                left = size
                while left:
                    b = self.rfile.read(min(left, 1 << 20))
                    if not b:
                        raise ConnectionError("short chunk")
                    if sink:
                        sink(b)
                    n += len(b)
                    left -= len(b)
                    if limit is not None and n >= limit:
                        return n
                self.rfile.readline(100)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                b = self.rfile.read(min(left, 1 << 20))
                if not b:
                    raise ConnectionError("short body")
                if sink:
                    sink(b)
                n += len(b)
                left -= len(b)
                if limit is not None and n >= limit:
                    return n
        return n

    def upload(self, iid):
        with lock:
            img = state["images"].get(iid)
            if img is None:
                return self.err(404, "itemNotFound", f"No image found with ID {iid}")
            if img["status"] != "queued":
                return self.err(409, "conflict", f"Image status transition from {img['status']} to saving is not allowed")
            img["status"] = "saving"
            state["uploads"] += 1
            drop = fault("drop-upload") and state["uploads"] == 1
        path = os.path.join(DIR, "img-" + iid)
        md5, sha = hashlib.md5(), hashlib.sha512()
        with open(path, "wb") as f:
            def sink(b):
                md5.update(b)
                sha.update(b)
                f.write(b)
            try:
                if drop:
                    # The connection dies a few MiB into the upload.
                    self.read_body(sink, limit=3 << 20)
                    with lock:
                        img["status"] = "queued"
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                n = self.read_body(sink)
            except (ConnectionError, ValueError):
                with lock:
                    img["status"] = "queued"
                self.close_connection = True
                return
        with lock:
            img["size"] = n
            img["checksum"] = md5.hexdigest()
            img["os_hash_algo"] = "sha512"
            img["os_hash_value"] = sha.hexdigest()
            if fault("checksum"):
                # The bytes were damaged on the way: Glance stored (and
                # hashed) something else than what was sent.
                with open(path, "r+b") as f:
                    f.seek(n // 2)
                    c = f.read(1)
                    f.seek(n // 2)
                    f.write(bytes([(c[0] if c else 0) ^ 0xFF]))
                img["checksum"] = hashlib.md5(open(path, "rb").read()).hexdigest()
                img["os_hash_value"] = hashlib.sha512(open(path, "rb").read()).hexdigest()
            img["status"] = "queued" if fault("image-stuck") else "active"
        self.reply(204)

    # ------------------------------------------------------------------ nova
    def create_server(self):
        b = (self.body_json() or {}).get("server")
        if not b:
            return self.err(400, "badRequest", "Malformed request body")
        with lock:
            # quota-1: room for one instance (a plan's second VM fails).
            if fault("quota") or (fault("quota-1") and len(state["servers"]) >= 1):
                return self.err(403, "forbidden",
                                "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances")
            img = state["images"].get(b.get("imageRef"))
            if img is None or img["status"] != "active":
                return self.err(400, "badRequest", f"Image {b.get('imageRef')} is not active.")
            flavor = next((f for f in FLAVORS if f["id"] == b.get("flavorRef")), None)
            if flavor is None:
                return self.err(400, "badRequest", f"Flavor {b.get('flavorRef')} could not be found.")
            nets = b.get("networks") or []
            if not nets or not any(n.get("uuid") == x["id"] for n in nets for x in NETWORKS):
                return self.err(400, "badRequest", "Network could not be found.")
            if b.get("key_name") and b["key_name"] not in KEYPAIRS:
                return self.err(400, "badRequest", f"Invalid key_name provided.")
            sid = str(uuid.uuid4())
            state["servers"][sid] = {"name": b.get("name", ""), "status": "BUILD", "imageRef": b["imageRef"],
                                     "flavor": flavor["id"], "volumes": [], "polls": 0,
                                     "metadata": b.get("metadata", {})}
        self.reply(202, {"server": {"id": sid, "adminPass": "generated-by-nova",
                                    "links": [{"rel": "self", "href": f"{self.base()}/compute/v2.1/servers/{sid}"}]}})

    def show_server(self, sid):
        with lock:
            srv = state["servers"].get(sid)
            if srv is None:
                return self.err(404, "itemNotFound", f"Instance {sid} could not be found.")
            srv["polls"] += 1
            view = {"id": sid, "name": srv["name"], "status": srv["status"], "metadata": srv["metadata"],
                    "addresses": {}}
            builds = 60 if fault("slow-build") else 2
            if srv["status"] == "BUILD" and srv["polls"] >= builds:
                srv["status"] = "ERROR" if fault("server-error") else "ACTIVE"
                view["status"] = srv["status"]
            if srv["status"] == "ERROR":
                view["fault"] = {"code": 500, "message": "No valid host was found. There are not enough hosts available.",
                                 "created": "2026-11-28T00:00:00Z"}
            if srv["status"] == "ACTIVE":
                n = list(state["servers"]).index(sid) + 10
                view["addresses"] = {"dr-net": [{"addr": f"10.0.0.{n}", "version": 4,
                                                 "OS-EXT-IPS:type": "fixed"}]}
            view["os-extended-volumes:volumes_attached"] = [{"id": v} for v in srv["volumes"]]
        self.reply(200, {"server": view})

    def attach(self, sid):
        b = (self.body_json() or {}).get("volumeAttachment") or {}
        vid = b.get("volumeId")
        with lock:
            srv, vol = state["servers"].get(sid), state["volumes"].get(vid)
            if srv is None:
                return self.err(404, "itemNotFound", f"Instance {sid} could not be found.")
            if vol is None:
                return self.err(404, "itemNotFound", f"Volume {vid} could not be found.")
            if vol["status"] != "available":
                return self.err(400, "badRequest", f"Invalid volume: volume {vid} is not available")
            srv["volumes"].append(vid)
            dev = "/dev/vd" + "bcdefgh"[len(srv["volumes"]) - 1]
            if fault("slow-attach"):
                # As Cinder does: reserved, then attaching, and only then
                # in-use with its attachment recorded.
                vol["status"], vol["attach_polls"] = "reserved", 0
                vol["pending"] = {"server_id": sid, "device": dev, "volume_id": vid}
            else:
                vol["status"] = "in-use"
                vol["attachments"] = [{"server_id": sid, "device": dev, "volume_id": vid}]
        self.reply(200, {"volumeAttachment": {"id": vid, "volumeId": vid, "serverId": sid, "device": dev}})

    # ---------------------------------------------------------------- cinder
    def create_volume(self):
        b = (self.body_json() or {}).get("volume")
        if not b or not isinstance(b.get("size"), int) or b["size"] < 1:
            return self.err(400, "badRequest", "Invalid input received: size must be an integer > 0")
        vid = str(uuid.uuid4())
        with lock:
            img_id = b.get("imageRef")
            if img_id is not None:
                img = state["images"].get(img_id)
                if img is None or img["status"] != "active":
                    return self.err(400, "badRequest", f"Invalid image identifier or unable to access requested image.")
                if img.get("size", 0) > b["size"] << 30:
                    return self.err(400, "badRequest", "Image is larger than the volume")
                # Cinder downloads the image into the volume.
                src = os.path.join(DIR, "img-" + img_id)
                with open(src, "rb") as s, open(os.path.join(DIR, "vol-" + vid), "wb") as d:
                    while True:
                        c = s.read(1 << 20)
                        if not c:
                            break
                        d.write(c)
            state["volumes"][vid] = {"name": b.get("name", ""), "size": b["size"], "status": "creating",
                                     "polls": 0, "attachments": [], "image": img_id}
        self.reply(202, {"volume": {"id": vid, "status": "creating", "size": b["size"]}})

    def show_volume(self, vid):
        with lock:
            vol = state["volumes"].get(vid)
            if vol is None:
                return self.err(404, "itemNotFound", f"Volume {vid} could not be found.")
            vol["polls"] += 1
            if vol["status"] == "creating" and vol["polls"] >= 2:
                vol["status"] = "available"
            if vol["status"] in ("reserved", "attaching"):
                vol["attach_polls"] += 1
                if vol["attach_polls"] >= 2:
                    vol["status"] = "attaching"
                if vol["attach_polls"] >= 40:
                    vol["status"] = "in-use"
                    vol["attachments"] = [vol.pop("pending")]
            view = {"id": vid, "name": vol["name"], "size": vol["size"], "status": vol["status"],
                    "attachments": vol["attachments"]}
        self.reply(200, {"volume": view})


def main():
    global DIR, PORT
    DIR = sys.argv[1]
    os.makedirs(DIR, exist_ok=True)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    PORT = srv.server_address[1]
    print(f"listening {PORT}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
