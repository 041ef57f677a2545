//! OpenStack: Keystone v3 (password or application credential) for a token
//! and the service catalog, Glance v2 for images (created, the raw image
//! streamed straight out of the store, polled until active, its checksum
//! compared with one computed while streaming), Nova for the server, Cinder
//! for data volumes (created from an image, attached through Nova), Neutron
//! to find the network.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::http::{self, Step};
use super::provider::{poll, CloudPlan, Ctx, Provider, Resource, Server, Uploaded};
use super::source::{zeros, Piece, VolumeImage};
use super::target::{read_secret, CloudConfig, Secret};
use crate::error::{Error, Result};
use crate::format::Index;
use crate::jobs::CancellationToken;

const GIB: u64 = 1 << 30;
/// How often a build, an image or a volume is polled.
const POLL: Duration = Duration::from_secs(2);
/// Uploads tried before giving up on a dropped connection.
const UPLOAD_TRIES: u32 = 3;
/// A token is renewed after this long: Keystone's default lifetime is an
/// hour, and a restore of large disks takes longer.
const TOKEN_RENEW: Duration = Duration::from_secs(30 * 60);

pub struct OpenStack {
    name: String,
    cfg: CloudConfig,
    client: reqwest::Client,
    secret: Secret,
    session: Mutex<Option<Arc<Session>>>,
}

struct Session {
    fetched: std::time::Instant,
    /// What was checked, one line each (`check`).
    lines: Vec<String>,
    token: Secret,
    project: String,
    image: String,
    compute: String,
    network: String,
    volume: Option<String>,
    flavor: Value,
    network_id: String,
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(|s| s.as_str()).unwrap_or("")
}

fn shown(s: &str) -> String {
    crate::text::escape(s).into_owned()
}

impl OpenStack {
    pub fn new(name: &str, cfg: &CloudConfig) -> Result<OpenStack> {
        let secret = if cfg.application_credential_id.is_some() {
            read_secret(
                name,
                "application credential secret",
                cfg.application_credential_secret_env.as_deref(),
                cfg.application_credential_secret_file.as_deref(),
                None,
            )?
        } else {
            read_secret(
                name,
                "password",
                cfg.password_env.as_deref(),
                cfg.password_file.as_deref(),
                None,
            )?
        };
        Ok(OpenStack {
            name: name.into(),
            client: http::client(cfg.timeout(), cfg.ca_cert.as_deref())?,
            cfg: cfg.clone(),
            secret,
            session: Mutex::new(None),
        })
    }

    fn step(&self, phase: &str) -> Step {
        Step::new(&self.name, phase)
    }

    fn req(&self, s: &Session, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .header("X-Auth-Token", s.token.expose())
            .header("Accept", "application/json")
            .timeout(self.cfg.timeout())
    }

    /// The token and the endpoints, fetched at the start and renewed
    /// every `TOKEN_RENEW`.
    async fn session(&self) -> Result<Arc<Session>> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.fetched.elapsed() < TOKEN_RENEW) {
            return Ok(s.clone());
        }
        let step = self.step("auth");
        let endpoint = self.cfg.endpoint.clone().unwrap_or_default();
        let url = format!("{}/auth/tokens", endpoint.trim_end_matches('/'));
        let (identity, how) = match &self.cfg.application_credential_id {
            Some(id) => (
                json!({"methods": ["application_credential"],
                       "application_credential": {"id": id, "secret": self.secret.expose()}}),
                "application credential",
            ),
            None => (
                json!({"methods": ["password"],
                       "password": {"user": {
                           "name": self.cfg.username,
                           "domain": {"name": self.cfg.user_domain.as_deref().unwrap_or("Default")},
                           "password": self.secret.expose()}}}),
                "password",
            ),
        };
        let mut body = json!({"auth": {"identity": identity}});
        if let Some(p) = &self.cfg.project {
            body["auth"]["scope"] = json!({"project": {
                "name": p,
                "domain": {"name": self.cfg.project_domain.as_deref().unwrap_or("Default")}}});
        }
        let (answer, v) = step
            .json(
                self.client
                    .post(&url)
                    .timeout(self.cfg.timeout())
                    .json(&body),
            )
            .await
            .map_err(|e| match http::status_of(&e) {
                Some(401) => http::reword(e, |reason| {
                    format!(
                        "Keystone refused the {how} ({reason}); check the credentials the config names"
                    )
                }),
                _ => e,
            })?;
        let token = answer
            .header("x-subject-token")
            .ok_or_else(|| step.fail("Keystone answered without an X-Subject-Token"))?
            .to_string();
        let tok = &v["token"];
        let project = str_of(&tok["project"], "id").to_string();
        let catalog = tok["catalog"].as_array().cloned().unwrap_or_default();
        let region = self.cfg.region.as_deref();
        let find = |types: &[&str]| -> Option<String> {
            catalog
                .iter()
                .filter(|s| types.contains(&str_of(s, "type")))
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .find(|e| {
                    str_of(e, "interface") == "public"
                        && region
                            .is_none_or(|r| str_of(e, "region") == r || str_of(e, "region_id") == r)
                })
                .map(|e| str_of(&e, "url").trim_end_matches('/').to_string())
                .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        };
        let need = |types: &[&str], what: &str| {
            find(types).ok_or_else(|| {
                step.fail(format!(
                    "the service catalog has no public {what} endpoint{}",
                    region
                        .map(|r| format!(" in region {r}"))
                        .unwrap_or_default()
                ))
            })
        };
        let mut s = Session {
            fetched: std::time::Instant::now(),
            lines: Vec::new(),
            token: Secret::new(token),
            project,
            image: need(&["image"], "image (Glance)")?,
            compute: need(&["compute"], "compute (Nova)")?,
            network: need(&["network"], "network (Neutron)")?,
            volume: find(&["volumev3", "block-storage", "volume"]),
            flavor: Value::Null,
            network_id: String::new(),
        };
        s.lines
            .push(format!("auth: ok ({how}, project {})", shown(&s.project)));
        s.flavor = self.find_flavor(&s).await?;
        s.lines.push(format!(
            "flavor {}: ok ({} vCPU, {} MiB, disk {} GiB)",
            shown(self.cfg.flavor.as_deref().unwrap_or("")),
            s.flavor["vcpus"],
            s.flavor["ram"],
            s.flavor["disk"]
        ));
        s.network_id = self.find_network(&s).await?;
        s.lines.push(format!(
            "network {}: ok ({})",
            shown(self.cfg.network.as_deref().unwrap_or("")),
            shown(&s.network_id)
        ));
        if let Some(sg) = &self.cfg.security_group {
            let step = self.step("security group");
            let (_, v) = step
                .json(self.req(
                    &s,
                    reqwest::Method::GET,
                    format!("{}/v2.0/security-groups?name={}", s.network, enc(sg)),
                ))
                .await?;
            if v["security_groups"].as_array().is_none_or(|a| a.is_empty()) {
                return Err(step.fail(format!("security group {sg:?} does not exist")));
            }
            s.lines.push(format!("security group {}: ok", shown(sg)));
        }
        if let Some(kp) = &self.cfg.key_pair {
            let step = self.step("key pair");
            step.send(self.req(
                &s,
                reqwest::Method::GET,
                format!("{}/os-keypairs/{}", s.compute, enc(kp)),
            ))
            .await
            .map_err(|e| step.fail(format!("key pair {kp:?}: {}", reason_of(&e))))?;
            s.lines.push(format!("key pair {}: ok", shown(kp)));
        }
        let s = Arc::new(s);
        *slot = Some(s.clone());
        Ok(s)
    }

    async fn find_flavor(&self, s: &Session) -> Result<Value> {
        let url = format!("{}/flavors/detail", s.compute);
        self.find_named(
            s,
            "flavor",
            &self.cfg.flavor,
            url,
            "flavors",
            "the cloud has",
        )
        .await
    }

    async fn find_network(&self, s: &Session) -> Result<String> {
        let url = format!("{}/v2.0/networks", s.network);
        let n = self
            .find_named(
                s,
                "network",
                &self.cfg.network,
                url,
                "networks",
                "the project sees",
            )
            .await?;
        Ok(str_of(&n, "id").to_string())
    }

    /// The item of a listing whose id or name is `want`; the error lists
    /// the names there are.
    async fn find_named(
        &self,
        s: &Session,
        what: &str,
        want: &Option<String>,
        url: String,
        key: &str,
        there: &str,
    ) -> Result<Value> {
        let step = self.step(what);
        let want = want.clone().unwrap_or_default();
        let (_, v) = step.json(self.req(s, reqwest::Method::GET, url)).await?;
        let all = v[key].as_array().cloned().unwrap_or_default();
        all.iter()
            .find(|f| str_of(f, "id") == want || str_of(f, "name") == want)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<String> = all.iter().map(|f| shown(str_of(f, "name"))).collect();
                step.fail(format!(
                    "{what} {want:?} does not exist ({there}: {})",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                ))
            })
    }

    async fn get_json(&self, s: &Session, step: &Step, url: String) -> Result<Value> {
        crate::retry::with_retry(3, || async {
            Ok(step
                .json(self.req(s, reqwest::Method::GET, url.clone()))
                .await?
                .1)
        })
        .await
    }

    async fn create_image(
        &self,
        s: &Session,
        vol: &VolumeImage,
        name: &str,
        ctx: &Ctx<'_>,
    ) -> Result<String> {
        let step = ctx.step(format!("image {}", vol.manifest.volume.name));
        let (_, v) = step
            .json(
                self.req(s, reqwest::Method::POST, format!("{}/v2/images", s.image))
                    .json(&json!({
                        "name": name,
                        "disk_format": "raw",
                        "container_format": "bare",
                        "visibility": "private",
                        "min_disk": vol.index.image_size.div_ceil(GIB),
                        "tags": ["lifeboat"],
                        "lifeboat_vm": vol.manifest.vm.name,
                        "lifeboat_backup": vol.key.id.to_hex(),
                    })),
            )
            .await?;
        let id = str_of(&v, "id").to_string();
        if id.is_empty() || id.len() > 255 {
            return Err(step.fail("Glance answered without an image id"));
        }
        ctx.ledger.add("image", &id, name);
        Ok(id)
    }

    /// Streams the image into Glance; returns the MD5 and SHA-512 of what
    /// was sent.
    async fn put_image_data(
        &self,
        s: &Session,
        vol: &VolumeImage,
        id: &str,
        ctx: &Ctx<'_>,
    ) -> Result<(String, String)> {
        use md5::Digest as _;
        let step = ctx.step(format!("upload {}", vol.manifest.volume.name));
        // The bytes are hashed on their own thread, in order, while hyper
        // sends them: the checksums cost no upload time.
        let (htx, mut hrx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        let hasher = tokio::task::spawn_blocking(move || {
            let (mut m, mut s) = (md5::Md5::new(), sha2::Sha512::new());
            while let Some(d) = hrx.blocking_recv() {
                m.update(&d);
                s.update(&d);
            }
            (hex::encode(m.finalize()), hex::encode(s.finalize()))
        });
        let failure: Arc<std::sync::Mutex<Option<Error>>> = Arc::default();
        let (fail, cancel) = (failure.clone(), ctx.cancel.clone());
        let progress_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sent = progress_total.clone();
        let limit = ctx.upload_limit.clone();
        let body = vol.pieces().then(move |piece| {
            let (htx, fail, cancel, sent, limit) = (
                htx.clone(),
                fail.clone(),
                cancel.clone(),
                sent.clone(),
                limit.clone(),
            );
            async move {
                let res: Result<bytes::Bytes> = async {
                    if cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                    let (_, p) = piece?;
                    let data = match p {
                        Piece::Data(b) => b,
                        Piece::Zero(n) => zeros(n as usize),
                    };
                    if let Some(l) = &limit {
                        l.take(data.len() as u64).await;
                    }
                    htx.send(data.clone())
                        .await
                        .map_err(|_| Error::Internal("the hashing thread ended".into()))?;
                    sent.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Ok(data)
                }
                .await;
                res.map_err(|e| {
                    let msg = e.to_string();
                    if let Ok(mut f) = fail.lock() {
                        f.get_or_insert(e);
                    }
                    std::io::Error::other(msg)
                })
            }
        });
        // Progress follows what hyper has taken from the stream.
        let counted = {
            let p = ctx.progress;
            let before = std::sync::atomic::AtomicU64::new(0);
            move || {
                let now = progress_total.load(std::sync::atomic::Ordering::Relaxed);
                let prev = before.swap(now, std::sync::atomic::Ordering::Relaxed);
                p.add(now.saturating_sub(prev), 0);
                now.saturating_sub(prev)
            }
        };
        let req = self
            .client
            .put(format!("{}/v2/images/{}/file", s.image, enc(id)))
            .header("X-Auth-Token", s.token.expose())
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", vol.index.image_size)
            .body(reqwest::Body::wrap_stream(body));
        let send = step.send(req);
        tokio::pin!(send);
        let res = loop {
            tokio::select! {
                r = &mut send => break r,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    let n = counted();
                    ctx.uploaded.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        };
        let n = counted();
        ctx.uploaded
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
            return Err(e);
        }
        res?;
        hasher
            .await
            .map_err(|e| Error::Internal(format!("hashing failed: {e}")))
    }
}

fn enc(s: &str) -> String {
    url_escape(s)
}

/// Percent-encodes a path segment or query value.
fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn reason_of(e: &Error) -> String {
    match e {
        Error::Cloud { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn addresses_of(server: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(nets) = server["addresses"].as_object() {
        for (net, list) in nets {
            for a in list.as_array().into_iter().flatten() {
                out.push(format!("{} ({})", shown(str_of(a, "addr")), shown(net)));
            }
        }
    }
    out
}

#[async_trait]
impl Provider for OpenStack {
    async fn check(&self) -> Result<Vec<String>> {
        Ok(self.session().await?.lines.clone())
    }

    fn upload_bytes(&self, index: &Index) -> u64 {
        index.image_size
    }

    async fn refuses(&self, plan: &CloudPlan) -> Result<Vec<String>> {
        let s = self.session().await?;
        let mut out = Vec::new();
        let root = plan
            .volumes
            .iter()
            .find(|v| v.role == crate::format::manifest::Role::Root)
            .or(plan.volumes.first());
        let disk = s.flavor["disk"].as_u64().unwrap_or(0);
        if let (Some(root), true) = (root, disk > 0) {
            if disk * GIB < root.image_size {
                out.push(format!(
                    "flavor {} has a {disk} GiB disk, the root volume {} is {}: choose a flavor with a disk of at least {} GiB",
                    shown(self.cfg.flavor.as_deref().unwrap_or("")),
                    root.volume,
                    crate::text::bytes(root.image_size),
                    root.image_size.div_ceil(GIB)
                ));
            }
        }
        if plan.volumes.len() > 1 && s.volume.is_none() {
            out.push(
                "the set has data volumes, but the service catalog has no block-storage (Cinder) endpoint to make them".into(),
            );
        }
        Ok(out)
    }

    fn creates(&self, plan: &CloudPlan) -> Vec<String> {
        let mut out = Vec::new();
        for v in &plan.volumes {
            out.push(format!(
                "Glance image {}-{} (raw, {}{})",
                plan.server_name,
                v.volume,
                crate::text::bytes(v.image_size),
                if v.role == crate::format::manifest::Role::Root {
                    ", boots the server"
                } else {
                    ", removed once its volume exists"
                }
            ));
        }
        out.push(format!(
            "Nova server {} (flavor {}, network {}{}{})",
            plan.server_name,
            self.cfg.flavor.as_deref().unwrap_or(""),
            self.cfg.network.as_deref().unwrap_or(""),
            super::target::shown_if(", key pair", &self.cfg.key_pair),
            super::target::shown_if(", security group", &self.cfg.security_group),
        ));
        for v in plan.volumes.iter().skip(1) {
            out.push(format!(
                "Cinder volume {}-{} ({} GiB) from its image, attached to the server",
                plan.server_name,
                v.volume,
                v.image_size.div_ceil(GIB)
            ));
        }
        out
    }

    async fn upload(&self, vol: &VolumeImage, name: &str, ctx: &Ctx<'_>) -> Result<Uploaded> {
        let s = self.session().await?;
        let volname = &vol.manifest.volume.name;
        ctx.phase(&format!("upload {volname}: creating the image"));
        let mut id = self.create_image(&s, vol, name, ctx).await?;
        let mut attempt = 1;
        let (md5, sha512) = loop {
            ctx.phase(&format!(
                "upload {volname}: {} into image {}",
                crate::text::bytes(vol.index.image_size),
                shown(&id)
            ));
            let before = ctx.uploaded.load(std::sync::atomic::Ordering::Relaxed);
            match self.put_image_data(&s, vol, &id, ctx).await {
                Ok(h) => break h,
                Err(e) if e.is_transient() && attempt < UPLOAD_TRIES => {
                    // A Glance upload cannot be resumed: the half-written
                    // image is removed and the upload starts over.
                    ctx.note(&format!(
                        "upload {volname}: {}; starting over with a new image (try {} of {UPLOAD_TRIES})",
                        reason_of(&e),
                        attempt + 1
                    ));
                    let now = ctx.uploaded.load(std::sync::atomic::Ordering::Relaxed);
                    ctx.uploaded
                        .fetch_sub(now - before, std::sync::atomic::Ordering::Relaxed);
                    ctx.progress.sub(now - before);
                    let old = Resource {
                        kind: "image".into(),
                        id: id.clone(),
                        name: name.into(),
                    };
                    self.remove(&old, ctx.cancel).await?;
                    ctx.ledger.forget(&id);
                    id = self.create_image(&s, vol, name, ctx).await?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        ctx.phase(&format!(
            "upload {volname}: waiting for image {} to become active",
            shown(&id)
        ));
        let step = ctx.step(format!("image {volname}"));
        let url = format!("{}/v2/images/{}", s.image, enc(&id));
        let stuck = format!(
            "image {} is still not active (Glance did not take the upload)",
            shown(&id)
        );
        let img = poll(ctx, &step, &stuck, POLL, || async {
            let v = self.get_json(&s, &step, url.clone()).await?;
            match str_of(&v, "status") {
                "active" => Ok(Some(v)),
                "killed" | "deleted" | "pending_delete" | "deactivated" => Err(step.fail(format!(
                    "Glance put image {} in state {}",
                    shown(&id),
                    shown(str_of(&v, "status"))
                ))),
                _ => Ok(None),
            }
        })
        .await?;
        let glance_md5 = str_of(&img, "checksum");
        if !glance_md5.is_empty() && glance_md5 != md5 {
            return Err(step.fail(format!(
                "Glance reports checksum {} for image {}, the bytes sent have MD5 {md5}: the upload was damaged on the way; run the restore again",
                shown(glance_md5),
                shown(&id)
            )));
        }
        if str_of(&img, "os_hash_algo") == "sha512" {
            let theirs = str_of(&img, "os_hash_value");
            if theirs != sha512 {
                return Err(step.fail(format!(
                    "Glance reports SHA-512 {} for image {}, the bytes sent hash to {sha512}: the upload was damaged on the way",
                    shown(theirs),
                    shown(&id)
                )));
            }
        }
        if img["size"]
            .as_u64()
            .is_some_and(|n| n != vol.index.image_size)
        {
            return Err(step.fail(format!(
                "Glance holds {} bytes for image {}, {} were sent",
                img["size"],
                shown(&id),
                vol.index.image_size
            )));
        }
        ctx.note(&format!(
            "upload {volname}: image {} active, MD5 {md5} matches what Glance computed",
            shown(&id)
        ));
        Ok(Uploaded {
            volume: volname.clone(),
            role: vol.manifest.volume.role,
            id,
            size: vol.index.image_size,
        })
    }

    async fn create_server(
        &self,
        plan: &CloudPlan,
        root: &Uploaded,
        ctx: &Ctx<'_>,
    ) -> Result<Server> {
        let s = self.session().await?;
        let step = ctx.step("server");
        let disk = s.flavor["disk"].as_u64().unwrap_or(0);
        if disk > 0 && disk * GIB < root.size {
            return Err(step.fail(format!(
                "flavor {} has a {disk} GiB disk, the root volume {} is {}: choose a larger flavor",
                shown(self.cfg.flavor.as_deref().unwrap_or("")),
                root.volume,
                crate::text::bytes(root.size)
            )));
        }
        ctx.phase(&format!("server {}: creating", plan.server_name));
        let mut server = json!({
            "name": plan.server_name,
            "imageRef": root.id,
            "flavorRef": str_of(&s.flavor, "id"),
            "networks": [{"uuid": s.network_id}],
            "metadata": {"lifeboat_vm": plan.vm, "lifeboat_set": plan.set},
        });
        if let Some(k) = &self.cfg.key_pair {
            server["key_name"] = json!(k);
        }
        if let Some(g) = &self.cfg.security_group {
            server["security_groups"] = json!([{"name": g}]);
        }
        let (_, v) = step
            .json(
                self.req(&s, reqwest::Method::POST, format!("{}/servers", s.compute))
                    .json(&json!({"server": server})),
            )
            .await?;
        let id = str_of(&v["server"], "id").to_string();
        if id.is_empty() || id.len() > 255 {
            return Err(step.fail("Nova answered without a server id"));
        }
        ctx.ledger.add("server", &id, &plan.server_name);
        ctx.phase(&format!(
            "server {}: building ({})",
            plan.server_name,
            shown(&id)
        ));
        let url = format!("{}/servers/{}", s.compute, enc(&id));
        let v = poll(ctx, &step, "the server is still building", POLL, || async {
            let v = self.get_json(&s, &step, url.clone()).await?;
            let sv = &v["server"];
            match str_of(sv, "status") {
                "ACTIVE" => Ok(Some(sv.clone())),
                "ERROR" => {
                    let fault = &sv["fault"];
                    let msg = str_of(fault, "message");
                    Err(step.fail(format!(
                        "server {} went to ERROR: {}{}",
                        shown(&id),
                        if msg.is_empty() {
                            "Nova gave no fault".to_string()
                        } else {
                            shown(msg)
                        },
                        fault["code"]
                            .as_u64()
                            .map(|c| format!(" (code {c})"))
                            .unwrap_or_default()
                    )))
                }
                _ => Ok(None),
            }
        })
        .await?;
        Ok(Server {
            id: shown(&id),
            name: plan.server_name.clone(),
            status: "ACTIVE".into(),
            addresses: addresses_of(&v),
            console: String::new(),
        })
    }

    async fn attach_data(
        &self,
        server: &Server,
        data: &Uploaded,
        _index: usize,
        ctx: &Ctx<'_>,
    ) -> Result<()> {
        let s = self.session().await?;
        let step = ctx.step(format!("volume {}", data.volume));
        let Some(vol_ep) = s.volume.clone() else {
            return Err(step.fail(
                "the service catalog has no block-storage (Cinder) endpoint for data volumes",
            ));
        };
        let name = format!("{}-{}", server.name, data.volume);
        ctx.phase(&format!(
            "volume {}: creating from image {}",
            data.volume,
            shown(&data.id)
        ));
        let mut body = json!({"size": data.size.div_ceil(GIB), "imageRef": data.id, "name": name});
        if let Some(az) = &self.cfg.availability_zone {
            body["availability_zone"] = json!(az);
        }
        let (_, v) = step
            .json(
                self.req(&s, reqwest::Method::POST, format!("{vol_ep}/volumes"))
                    .json(&json!({"volume": body})),
            )
            .await?;
        let vid = str_of(&v["volume"], "id").to_string();
        if vid.is_empty() || vid.len() > 255 {
            return Err(step.fail("Cinder answered without a volume id"));
        }
        ctx.ledger.add("volume", &vid, &name);
        let url = format!("{vol_ep}/volumes/{}", enc(&vid));
        poll(
            ctx,
            &step,
            "the volume is still not available",
            POLL,
            || async {
                let v = self.get_json(&s, &step, url.clone()).await?;
                match str_of(&v["volume"], "status") {
                    "available" => Ok(Some(())),
                    st @ ("error" | "error_restoring" | "error_extending") => {
                        Err(step.fail(format!("volume {} went to {}", shown(&vid), shown(st))))
                    }
                    _ => Ok(None),
                }
            },
        )
        .await?;
        // The image only carried the bytes into the volume.
        let img = Resource {
            kind: "image".into(),
            id: data.id.clone(),
            name: name.clone(),
        };
        if self.remove(&img, ctx.cancel).await.is_ok() {
            ctx.ledger.forget(&data.id);
            ctx.note(&format!(
                "volume {}: intermediate image {} removed",
                data.volume,
                shown(&data.id)
            ));
        }
        ctx.phase(&format!(
            "volume {}: attaching to {}",
            data.volume, server.id
        ));
        step.send(
            self.req(
                &s,
                reqwest::Method::POST,
                format!(
                    "{}/servers/{}/os-volume_attachments",
                    s.compute,
                    enc(&server.id)
                ),
            )
            .json(&json!({"volumeAttachment": {"volumeId": vid}})),
        )
        .await?;
        poll(
            ctx,
            &step,
            "the volume is still not attached",
            POLL,
            || async {
                let v = self.get_json(&s, &step, url.clone()).await?;
                match str_of(&v["volume"], "status") {
                    "in-use" => Ok(Some(())),
                    "error" | "error_attaching" => {
                        Err(step.fail(format!("attaching volume {} failed", shown(&vid))))
                    }
                    _ => Ok(None),
                }
            },
        )
        .await?;
        ctx.note(&format!("volume {}: attached", data.volume));
        Ok(())
    }

    async fn finish(&self, server: &mut Server, ctx: &Ctx<'_>) -> Result<()> {
        let s = self.session().await?;
        let step = ctx.step("server");
        let v = self
            .get_json(
                &s,
                &step,
                format!("{}/servers/{}", s.compute, enc(&server.id)),
            )
            .await?;
        server.addresses = addresses_of(&v["server"]);
        server.status = shown(str_of(&v["server"], "status"));
        let console = step
            .json(
                self.req(
                    &s,
                    reqwest::Method::POST,
                    format!("{}/servers/{}/remote-consoles", s.compute, enc(&server.id)),
                )
                .header("OpenStack-API-Version", "compute 2.6")
                .header("X-OpenStack-Nova-API-Version", "2.6")
                .json(&json!({"remote_console": {"protocol": "vnc", "type": "novnc"}})),
            )
            .await;
        server.console = match console {
            Ok((_, v)) if !str_of(&v["remote_console"], "url").is_empty() => {
                shown(str_of(&v["remote_console"], "url"))
            }
            _ => format!("openstack console url show {}", server.id),
        };
        Ok(())
    }

    async fn remove(&self, r: &Resource, cancel: &CancellationToken) -> Result<()> {
        let s = self.session().await?;
        let step = self.step(&format!("removing {} {}", r.kind, r.id));
        let gone = |e: &Error| http::status_of(e) == Some(404);
        let ok_if_gone = |res: Result<http::Answer>| match res {
            Ok(_) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(e),
        };
        let wait_gone = |url: String| {
            let (s, step) = (s.clone(), step.clone());
            async move {
                for _ in 0..150 {
                    match step
                        .send(self.req(&s, reqwest::Method::GET, url.clone()))
                        .await
                    {
                        Err(e) if gone(&e) => return Ok(()),
                        Err(e) if !e.is_transient() => return Err(e),
                        _ => http::pause(Duration::from_millis(400), cancel).await?,
                    }
                }
                Err(step.fail("it is still there after 60 s"))
            }
        };
        match r.kind.as_str() {
            "image" => ok_if_gone(
                step.send(self.req(
                    &s,
                    reqwest::Method::DELETE,
                    format!("{}/v2/images/{}", s.image, enc(&r.id)),
                ))
                .await,
            ),
            "server" => {
                let url = format!("{}/servers/{}", s.compute, enc(&r.id));
                ok_if_gone(
                    step.send(self.req(&s, reqwest::Method::DELETE, url.clone()))
                        .await,
                )?;
                // Volumes attached to it are free only once it is gone.
                wait_gone(url).await
            }
            "volume" => {
                let Some(ep) = s.volume.clone() else {
                    return Ok(());
                };
                let url = format!("{ep}/volumes/{}", enc(&r.id));
                let v = match step
                    .json(self.req(&s, reqwest::Method::GET, url.clone()))
                    .await
                {
                    Ok((_, v)) => v,
                    Err(e) if gone(&e) => return Ok(()),
                    Err(e) => return Err(e),
                };
                // Its state is read again while waiting: an attachment in
                // progress (reserved, attaching) appears only later, and
                // is detached then (the server, removed first, ends most).
                let mut detached = std::collections::BTreeSet::new();
                let mut v = v;
                for _ in 0..150 {
                    for a in v["volume"]["attachments"].as_array().into_iter().flatten() {
                        let sid = str_of(a, "server_id").to_string();
                        if !detached.insert(sid.clone()) {
                            continue;
                        }
                        let _ = step
                            .send(self.req(
                                &s,
                                reqwest::Method::DELETE,
                                format!(
                                    "{}/servers/{}/os-volume_attachments/{}",
                                    s.compute,
                                    enc(&sid),
                                    enc(&r.id)
                                ),
                            ))
                            .await;
                    }
                    if !matches!(
                        str_of(&v["volume"], "status"),
                        "in-use"
                            | "detaching"
                            | "creating"
                            | "downloading"
                            | "attaching"
                            | "reserved"
                            | "maintenance"
                    ) {
                        break;
                    }
                    http::pause(Duration::from_millis(400), cancel).await?;
                    v = match step
                        .json(self.req(&s, reqwest::Method::GET, url.clone()))
                        .await
                    {
                        Ok((_, v)) => v,
                        Err(e) if gone(&e) => return Ok(()),
                        Err(e) => return Err(e),
                    };
                }
                ok_if_gone(step.send(self.req(&s, reqwest::Method::DELETE, url)).await)
            }
            _ => Ok(()),
        }
    }
}
