//! AWS: a volume becomes an EBS snapshot through the EBS direct APIs
//! (StartSnapshot, PutSnapshotBlock of 512 KiB blocks with their SHA-256,
//! CompleteSnapshot); all-zero blocks are never sent (a new snapshot reads
//! zeros where nothing was written), which the repository's zero chunks
//! make free. The root snapshot is registered as an AMI (EC2
//! RegisterImage) and started (RunInstances); data snapshots become
//! volumes (CreateVolume) attached to the instance (AttachVolume).
//!
//! Requests are signed with `aws-sigv4`; EC2's Query API and EBS's
//! REST-JSON API are spoken directly over `reqwest` (the whole EC2 SDK would
//! cost CI more build time than every other dependency together).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use sha2::Digest as _;

use super::http::{self, Step};
use super::provider::{poll, CloudPlan, Ctx, Provider, Resource, Server, Uploaded};
use super::source::{Piece, VolumeImage};
use super::target::{read_secret, CloudConfig};
use crate::error::{Error, Result};
use crate::format::Index;
use crate::jobs::CancellationToken;

/// The EBS direct APIs' block size.
pub const BLOCK: usize = 512 << 10;
const GIB: u64 = 1 << 30;
const POLL: Duration = Duration::from_secs(2);
/// Blocks in flight at once.
const PARALLEL_BLOCKS: usize = 16;
const EC2_VERSION: &str = "2016-11-15";

pub struct Aws {
    name: String,
    cfg: CloudConfig,
    client: reqwest::Client,
    creds: aws_credential_types::Credentials,
    region: String,
    ec2: String,
    ebs: String,
}

/// A parsed XML answer: every text node with its element path
/// (`reservationSet/item/instancesSet/item/instanceId`).
struct Xml(Vec<(String, String)>);

impl Xml {
    fn parse(step: &Step, body: &[u8]) -> Result<Xml> {
        use quick_xml::events::Event;
        let text = std::str::from_utf8(body).map_err(|_| step.fail("the answer is not UTF-8"))?;
        let mut r = quick_xml::Reader::from_str(text);
        let (mut path, mut out): (Vec<String>, Vec<(String, String)>) = (Vec::new(), Vec::new());
        loop {
            match r.read_event() {
                Ok(Event::Start(e)) => {
                    if path.len() > 32 {
                        return Err(step.fail("the answer's XML nests too deep"));
                    }
                    path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned())
                }
                Ok(Event::End(_)) => {
                    path.pop();
                }
                Ok(Event::Text(t)) => {
                    let s = t.decode().map(|c| c.into_owned()).unwrap_or_default();
                    if !s.trim().is_empty() {
                        out.push((path.join("/"), s));
                    }
                }
                Ok(Event::GeneralRef(g)) => {
                    let name = g.decode().map(|c| c.into_owned()).unwrap_or_default();
                    let s = quick_xml::escape::unescape(&format!("&{name};"))
                        .map(|c| c.into_owned())
                        .unwrap_or_default();
                    let p = path.join("/");
                    match out.last_mut() {
                        Some((lp, v)) if *lp == p => v.push_str(&s),
                        _ => out.push((p, s)),
                    }
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => return Err(step.fail(format!("the answer is not XML ({e})"))),
            }
        }
        Ok(Xml(out))
    }

    /// The first text whose path ends with `suffix`.
    fn get(&self, suffix: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(p, _)| p == suffix || p.ends_with(&format!("/{suffix}")))
            .map(|(_, v)| crate::text::escape(v).into_owned())
    }
}

impl Aws {
    pub fn new(name: &str, cfg: &CloudConfig) -> Result<Aws> {
        let key = read_secret(
            name,
            "access key id",
            cfg.access_key_id_env.as_deref(),
            cfg.access_key_id_file.as_deref(),
            Some("AWS_ACCESS_KEY_ID"),
        )?;
        let secret = read_secret(
            name,
            "secret access key",
            cfg.secret_access_key_env.as_deref(),
            cfg.secret_access_key_file.as_deref(),
            Some("AWS_SECRET_ACCESS_KEY"),
        )?;
        let token = match &cfg.session_token_env {
            Some(v) => Some(read_secret(name, "session token", Some(v), None, None)?),
            None => std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|t| !t.is_empty() && cfg.access_key_id_env.is_none())
                .map(super::target::Secret::new),
        };
        let region = cfg.region.clone().unwrap_or_default();
        let (ec2, ebs) = match &cfg.endpoint {
            Some(e) => {
                let e = e.trim_end_matches('/').to_string();
                (e.clone(), e)
            }
            None => (
                format!("https://ec2.{region}.amazonaws.com"),
                format!("https://ebs.{region}.amazonaws.com"),
            ),
        };
        Ok(Aws {
            name: name.into(),
            client: http::client(cfg.timeout(), cfg.ca_cert.as_deref())?,
            creds: aws_credential_types::Credentials::new(
                key.expose(),
                secret.expose(),
                token.map(|t| t.expose().to_string()),
                None,
                "lifeboat-config",
            ),
            region,
            ec2,
            ebs,
            cfg: cfg.clone(),
        })
    }

    /// SigV4 headers for a request.
    fn signed(
        &self,
        step: &Step,
        service: &str,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        payload_sha256: String,
    ) -> Result<Vec<(String, String)>> {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        use aws_sigv4::sign::v4;
        let identity = self.creds.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| step.fail(format!("cannot sign the request: {e}")))?
            .into();
        let req = SignableRequest::new(
            method,
            url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Precomputed(payload_sha256),
        )
        .map_err(|e| step.fail(format!("cannot sign the request: {e}")))?;
        let (instr, _) = sign(req, &params)
            .map_err(|e| step.fail(format!("cannot sign the request: {e}")))?
            .into_parts();
        Ok(instr
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// A signed request for `service` ("ec2", "ebs").
    fn request(
        &self,
        step: &Step,
        (service, method, url): (&str, reqwest::Method, &str),
        headers: Vec<(&str, String)>,
        body: Bytes,
        body_sha256: Option<String>,
    ) -> Result<reqwest::RequestBuilder> {
        let hash = body_sha256.unwrap_or_else(|| hex::encode(sha2::Sha256::digest(&body)));
        let signed = self.signed(step, service, method.as_str(), url, &headers, hash)?;
        let mut r = self
            .client
            .request(method, url)
            .timeout(self.cfg.timeout())
            .body(body);
        for (k, v) in headers.iter() {
            r = r.header(*k, v);
        }
        for (k, v) in signed {
            r = r.header(k, v);
        }
        Ok(r)
    }

    /// One EC2 Query API call, retried while the failure is passing.
    async fn ec2(&self, step: &Step, action: &str, params: &[(String, String)]) -> Result<Xml> {
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", action);
            form.append_pair("Version", EC2_VERSION);
            for (k, v) in params {
                form.append_pair(k, v);
            }
            Bytes::from(form.finish())
        };
        let url = format!("{}/", self.ec2);
        let answer = crate::retry::with_retry(3, || async {
            let r = self.request(
                step,
                ("ec2", reqwest::Method::POST, &url),
                vec![(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8".to_string(),
                )],
                body.clone(),
                None,
            )?;
            step.send(r).await
        })
        .await
        .map_err(|e| self.explain_auth(e))?;
        Xml::parse(step, &answer.body)
    }

    /// Says what to do when AWS refuses the keys themselves.
    fn explain_auth(&self, e: Error) -> Error {
        // AWS names the refusal in the error code (EC2's XML, EBS's
        // __type), which the message carries as "Code: message".
        let refused = matches!(&e, Error::Cloud { reason, .. } if [
            "AuthFailure",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "UnrecognizedClientException",
            "security token",
        ]
        .iter()
        .any(|w| reason.contains(w)));
        if !refused {
            return e;
        }
        http::reword(e, |reason| {
            format!(
                "AWS refused the access key ({reason}); check the key variables or files the config names"
            )
        })
    }

    async fn ebs_json(
        &self,
        step: &Step,
        method: reqwest::Method,
        path: &str,
        headers: Vec<(&str, String)>,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.ebs);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut headers = headers;
        if !bytes.is_empty() {
            headers.push(("content-type", "application/json".into()));
        }
        let r = self.request(step, ("ebs", method, &url), headers, bytes, None)?;
        let (_, v) = step.json(r).await.map_err(|e| self.explain_auth(e))?;
        Ok(v)
    }

    async fn put_block(
        &self,
        step: &Step,
        snapshot: &str,
        index: u64,
        data: Bytes,
        sha: [u8; 32],
    ) -> Result<()> {
        let url = format!("{}/snapshots/{}/blocks/{index}", self.ebs, enc(snapshot));
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha);
        crate::retry::with_retry(5, || async {
            let r = self.request(
                step,
                ("ebs", reqwest::Method::PUT, &url),
                vec![
                    ("content-type", "application/octet-stream".into()),
                    ("x-amz-checksum", checksum.clone()),
                    ("x-amz-checksum-algorithm", "SHA256".into()),
                    ("x-amz-data-length", data.len().to_string()),
                ],
                data.clone(),
                Some(hex::encode(sha)),
            )?;
            step.send(r).await.map(|_| ())
        })
        .await
        .map_err(|e| self.explain_auth(e))
    }

    async fn describe_instance(&self, step: &Step, id: &str) -> Result<Xml> {
        self.ec2(
            step,
            "DescribeInstances",
            &[("InstanceId.1".into(), id.into())],
        )
        .await
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn p(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// 512 KiB blocks of a piece that are not all zero, with their index and
/// SHA-256 (the last block of an image padded with zeros).
fn blocks_of(offset: u64, data: &Bytes) -> Vec<(u64, Bytes, [u8; 32])> {
    let zero = super::source::zeros(BLOCK);
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let end = (at + BLOCK).min(data.len());
        let mut blk = data.slice(at..end);
        if blk.len() < BLOCK {
            let mut v = blk.to_vec();
            v.resize(BLOCK, 0);
            blk = Bytes::from(v);
        }
        if blk[..] != zero[..] {
            let sha: [u8; 32] = sha2::Sha256::digest(&blk).into();
            out.push(((offset + at as u64) / BLOCK as u64, blk, sha));
        }
        at = end;
    }
    out
}

#[async_trait]
impl Provider for Aws {
    async fn check(&self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        let mut say = |l: String| lines.push(l);
        let step = Step::new(&self.name, "auth");
        let it = self.cfg.instance_type.clone().unwrap_or_default();
        let x = self
            .ec2(&step, "DescribeInstanceTypes", &[p("InstanceType.1", &it)])
            .await
            .map_err(|e| match e {
                Error::Cloud { reason, .. }
                    if reason.contains("InvalidInstanceType")
                        || reason.contains("InvalidParameterValue") =>
                {
                    Step::new(&self.name, "instance type").fail(format!(
                        "instance type {it:?} does not exist in {} ({reason})",
                        self.region
                    ))
                }
                other => other,
            })?;
        say(format!("auth: ok (region {})", self.region));
        match x.get("instanceTypeSet/item/instanceType") {
            Some(_) => say(format!(
                "instance type {}: ok{}",
                crate::text::escape(&it),
                x.get("memoryInfo/sizeInMiB")
                    .map(|m| format!(
                        " ({} vCPU, {m} MiB)",
                        x.get("vCpuInfo/defaultVCpus").unwrap_or_default()
                    ))
                    .unwrap_or_default()
            )),
            None => {
                return Err(Step::new(&self.name, "instance type").fail(format!(
                    "instance type {it:?} does not exist in {}",
                    self.region
                )))
            }
        }
        if let Some(s) = &self.cfg.subnet {
            let x = self
                .ec2(
                    &Step::new(&self.name, "subnet"),
                    "DescribeSubnets",
                    &[p("SubnetId.1", s)],
                )
                .await?;
            say(format!(
                "subnet {}: ok ({}, {})",
                crate::text::escape(s),
                x.get("availabilityZone").unwrap_or_default(),
                x.get("cidrBlock").unwrap_or_default()
            ));
        }
        if let Some(g) = &self.cfg.security_group {
            self.ec2(
                &Step::new(&self.name, "security group"),
                "DescribeSecurityGroups",
                &[p("GroupId.1", g)],
            )
            .await?;
            say(format!("security group {}: ok", crate::text::escape(g)));
        }
        if let Some(k) = &self.cfg.key_pair {
            self.ec2(
                &Step::new(&self.name, "key pair"),
                "DescribeKeyPairs",
                &[p("KeyName.1", k)],
            )
            .await?;
            say(format!("key pair {}: ok", crate::text::escape(k)));
        }
        Ok(lines)
    }

    fn upload_bytes(&self, index: &Index) -> u64 {
        // At most: zero blocks inside non-zero chunks are skipped too.
        let blocks_per_chunk = index.chunk_size.div_ceil(BLOCK as u64);
        (0..index.chunks.len())
            .filter(|&i| !index.chunks[i].is_zero())
            .map(|i| {
                index
                    .chunk_len(i)
                    .div_ceil(BLOCK as u64)
                    .min(blocks_per_chunk)
                    * BLOCK as u64
            })
            .sum()
    }

    fn creates(&self, plan: &CloudPlan) -> Vec<String> {
        let mut out = Vec::new();
        for v in &plan.volumes {
            out.push(format!(
                "EBS snapshot of {} ({} GiB; at most {} in 512 KiB blocks, zero blocks skipped)",
                v.volume,
                v.image_size.div_ceil(GIB),
                crate::text::bytes(v.upload_bytes)
            ));
        }
        out.push(format!(
            "AMI {} from the root snapshot ({} boot)",
            plan.server_name,
            match plan.firmware {
                crate::vm::Firmware::Uefi => "UEFI",
                crate::vm::Firmware::Bios => "legacy BIOS",
            }
        ));
        out.push(format!(
            "EC2 instance {} ({}{}{}{})",
            plan.server_name,
            self.cfg.instance_type.as_deref().unwrap_or(""),
            super::target::shown_if(", subnet", &self.cfg.subnet),
            super::target::shown_if(", security group", &self.cfg.security_group),
            super::target::shown_if(", key pair", &self.cfg.key_pair),
        ));
        for v in plan.volumes.iter().skip(1) {
            out.push(format!(
                "EBS volume of {} from its snapshot, attached to the instance",
                v.volume
            ));
        }
        out
    }

    async fn upload(&self, vol: &VolumeImage, name: &str, ctx: &Ctx<'_>) -> Result<Uploaded> {
        let volname = vol.manifest.volume.name.clone();
        let step = ctx.step(format!("upload {volname}"));
        ctx.phase(&format!("upload {volname}: starting an EBS snapshot"));
        let size_gib = vol.index.image_size.div_ceil(GIB).max(1);
        let v = self
            .ebs_json(
                &step,
                reqwest::Method::POST,
                "/snapshots",
                vec![],
                Some(json!({
                    "VolumeSize": size_gib,
                    "Description": format!("lifeboat {} {} backup {}", vol.manifest.vm.name, volname, vol.key.id.to_hex()),
                    "Tags": [{"Key": "Name", "Value": name}, {"Key": "lifeboat-backup", "Value": vol.key.id.to_hex()}],
                    "ClientToken": format!("lifeboat-{}-{}", vol.key.id.to_hex().get(..16).unwrap_or(""), rand::random::<u64>()),
                    "Timeout": 60,
                })),
            )
            .await?;
        let snap = v["SnapshotId"].as_str().unwrap_or("").to_string();
        if snap.is_empty() || snap.len() > 128 || !snap.starts_with("snap-") {
            return Err(step.fail("StartSnapshot answered without a snapshot id"));
        }
        ctx.ledger.add("snapshot", &snap, name);
        ctx.phase(&format!(
            "upload {volname}: non-zero 512 KiB blocks into {snap}"
        ));
        let written = std::sync::atomic::AtomicU64::new(0);
        let blocks = vol
            .pieces()
            .map(|piece| async move {
                let (off, p) = piece?;
                match p {
                    Piece::Zero(_) => Ok(Vec::new()),
                    Piece::Data(b) => tokio::task::spawn_blocking(move || blocks_of(off, &b))
                        .await
                        .map_err(|e| Error::Internal(format!("hashing failed: {e}"))),
                }
            })
            .buffered(2)
            .flat_map(|r| {
                futures::stream::iter(match r {
                    Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                })
            })
            .map(|b| {
                let (step, snap, written) = (&step, &snap, &written);
                async move {
                    ctx.check_cancel()?;
                    let (idx, data, sha) = b?;
                    let n = data.len() as u64;
                    ctx.throttle(n).await;
                    self.put_block(step, snap, idx, data, sha).await?;
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    ctx.sent(n);
                    Ok::<(), Error>(())
                }
            })
            .buffer_unordered(PARALLEL_BLOCKS);
        futures::pin_mut!(blocks);
        while let Some(r) = blocks.next().await {
            r?;
        }
        let count = written.load(std::sync::atomic::Ordering::Relaxed);
        ctx.phase(&format!(
            "upload {volname}: completing snapshot {snap} ({count} blocks)"
        ));
        self.ebs_json(
            &step,
            reqwest::Method::POST,
            &format!("/snapshots/completion/{}", enc(&snap)),
            vec![("x-amz-changedblockscount", count.to_string())],
            None,
        )
        .await?;
        let sstep = ctx.step(format!("snapshot {volname}"));
        poll(
            ctx,
            &sstep,
            "the snapshot is still pending",
            POLL,
            || async {
                let x = self
                    .ec2(&sstep, "DescribeSnapshots", &[p("SnapshotId.1", &snap)])
                    .await?;
                match x.get("snapshotSet/item/status").as_deref() {
                    Some("completed") => Ok(Some(())),
                    Some("error") => Err(sstep.fail(format!(
                        "snapshot {snap} failed: {}",
                        x.get("stateMessage").unwrap_or_default()
                    ))),
                    _ => Ok(None),
                }
            },
        )
        .await?;
        ctx.note(&format!(
            "upload {volname}: snapshot {snap} completed ({count} blocks written)"
        ));
        Ok(Uploaded {
            volume: volname,
            role: vol.manifest.volume.role,
            id: snap.clone(),
            size: vol.index.image_size,
        })
    }

    async fn create_server(
        &self,
        plan: &CloudPlan,
        root: &Uploaded,
        ctx: &Ctx<'_>,
    ) -> Result<Server> {
        let step = ctx.step("image");
        ctx.phase(&format!(
            "image {}: registering from {}",
            plan.server_name, root.id
        ));
        let boot = match plan.firmware {
            crate::vm::Firmware::Uefi => "uefi",
            crate::vm::Firmware::Bios => "legacy-bios",
        };
        // AMI names are unique per account and region: a second restore of
        // the same backup (a drill, a retry) must not collide with the first.
        let ami_name = format!(
            "{}-at-{}",
            plan.server_name,
            chrono::Utc::now().format("%Y%m%dT%H%M%S%3f")
        );
        let x = self
            .ec2(
                &step,
                "RegisterImage",
                &[
                    p("Name", &ami_name),
                    p(
                        "Description",
                        format!("lifeboat restore of {} set {}", plan.vm, plan.set),
                    ),
                    p("Architecture", "x86_64"),
                    p("VirtualizationType", "hvm"),
                    p("EnaSupport", "true"),
                    p("BootMode", boot),
                    p("RootDeviceName", "/dev/xvda"),
                    p("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
                    p("BlockDeviceMapping.1.Ebs.SnapshotId", &root.id),
                    p("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
                    p("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
                ],
            )
            .await?;
        let ami = x.get("imageId").unwrap_or_default();
        if !ami.starts_with("ami-") {
            return Err(step.fail("RegisterImage answered without an image id"));
        }
        ctx.ledger.add("image", &ami, &ami_name);
        let step = ctx.step("server");
        ctx.phase(&format!("server {}: starting from {ami}", plan.server_name));
        let mut params = vec![
            p("ImageId", &ami),
            p(
                "InstanceType",
                self.cfg.instance_type.as_deref().unwrap_or(""),
            ),
            p("MinCount", 1),
            p("MaxCount", 1),
            p("ClientToken", format!("lifeboat-{}", rand::random::<u64>())),
            p("TagSpecification.1.ResourceType", "instance"),
            p("TagSpecification.1.Tag.1.Key", "Name"),
            p("TagSpecification.1.Tag.1.Value", &plan.server_name),
        ];
        if let Some(s) = &self.cfg.subnet {
            params.push(p("SubnetId", s));
        }
        if let Some(g) = &self.cfg.security_group {
            params.push(p("SecurityGroupId.1", g));
        }
        if let Some(k) = &self.cfg.key_pair {
            params.push(p("KeyName", k));
        }
        let x = self.ec2(&step, "RunInstances", &params).await?;
        let id = x.get("instancesSet/item/instanceId").unwrap_or_default();
        if !id.starts_with("i-") {
            return Err(step.fail("RunInstances answered without an instance id"));
        }
        ctx.ledger.add("instance", &id, &plan.server_name);
        ctx.phase(&format!("server {}: pending ({id})", plan.server_name));
        let x = poll(
            ctx,
            &step,
            "the instance is still pending",
            POLL,
            || async {
                let x = self.describe_instance(&step, &id).await?;
                match x.get("instanceState/name").as_deref() {
                    Some("running") => Ok(Some(x)),
                    Some(s @ ("terminated" | "shutting-down" | "stopped" | "stopping")) => {
                        Err(step.fail(format!(
                            "instance {id} went to {s}: {}",
                            x.get("stateReason/message")
                                .unwrap_or_else(|| "AWS gave no reason".into())
                        )))
                    }
                    _ => Ok(None),
                }
            },
        )
        .await?;
        let _ = x;
        Ok(Server {
            id: id.clone(),
            name: plan.server_name.clone(),
            status: "running".into(),
            addresses: Vec::new(),
            console: String::new(),
        })
    }

    async fn attach_data(
        &self,
        server: &Server,
        data: &Uploaded,
        index: usize,
        ctx: &Ctx<'_>,
    ) -> Result<()> {
        let step = ctx.step(format!("volume {}", data.volume));
        let x = self.describe_instance(&step, &server.id).await?;
        let az = x
            .get("placement/availabilityZone")
            .ok_or_else(|| step.fail("the instance has no availability zone"))?;
        ctx.phase(&format!(
            "volume {}: creating from {} in {az}",
            data.volume, data.id
        ));
        let x = self
            .ec2(
                &step,
                "CreateVolume",
                &[
                    p("SnapshotId", &data.id),
                    p("AvailabilityZone", &az),
                    p("VolumeType", "gp3"),
                    p("ClientToken", format!("lifeboat-{}", rand::random::<u64>())),
                    p("TagSpecification.1.ResourceType", "volume"),
                    p("TagSpecification.1.Tag.1.Key", "Name"),
                    p(
                        "TagSpecification.1.Tag.1.Value",
                        format!("{}-{}", server.name, data.volume),
                    ),
                ],
            )
            .await?;
        let vid = x.get("volumeId").unwrap_or_default();
        if !vid.starts_with("vol-") {
            return Err(step.fail("CreateVolume answered without a volume id"));
        }
        ctx.ledger
            .add("volume", &vid, &format!("{}-{}", server.name, data.volume));
        let state = |want: &'static str| {
            let (step, vid) = (&step, &vid);
            move || async move {
                let x = self
                    .ec2(step, "DescribeVolumes", &[p("VolumeId.1", vid)])
                    .await?;
                match x.get("volumeSet/item/status").as_deref() {
                    Some(s) if s == want => Ok(Some(())),
                    Some("error") => Err(step.fail(format!("volume {vid} went to error"))),
                    _ => Ok(None),
                }
            }
        };
        poll(
            ctx,
            &step,
            "the volume is still not available",
            POLL,
            state("available"),
        )
        .await?;
        let device = format!("/dev/sd{}", (b'f' + (index as u8).min(20)) as char);
        ctx.phase(&format!(
            "volume {}: attaching {vid} as {device}",
            data.volume
        ));
        self.ec2(
            &step,
            "AttachVolume",
            &[
                p("VolumeId", &vid),
                p("InstanceId", &server.id),
                p("Device", &device),
            ],
        )
        .await?;
        poll(
            ctx,
            &step,
            "the volume is still not attached",
            POLL,
            state("in-use"),
        )
        .await?;
        ctx.note(&format!("volume {}: attached as {device}", data.volume));
        Ok(())
    }

    async fn finish(&self, server: &mut Server, ctx: &Ctx<'_>) -> Result<()> {
        let step = ctx.step("server");
        let x = self.describe_instance(&step, &server.id).await?;
        server.addresses = [("privateIpAddress", "private"), ("ipAddress", "public")]
            .iter()
            .filter_map(|(k, what)| {
                x.get(&format!("instancesSet/item/{k}"))
                    .map(|a| format!("{a} ({what})"))
            })
            .collect();
        server.status = x.get("instanceState/name").unwrap_or_default();
        server.console = format!(
            "aws ec2 get-console-output --region {} --instance-id {} (or the EC2 serial console)",
            self.region, server.id
        );
        Ok(())
    }

    async fn remove(&self, r: &Resource, cancel: &CancellationToken) -> Result<()> {
        let step = Step::new(&self.name, format!("removing {} {}", r.kind, r.id));
        let gone = |e: &Error| {
            http::status_of(e) == Some(404)
                || matches!(e, Error::Cloud { reason, .. } if reason.contains("NotFound"))
        };
        let ok_if_gone = |res: Result<Xml>| match res {
            Ok(_) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(e),
        };
        match r.kind.as_str() {
            "snapshot" => ok_if_gone(
                self.ec2(&step, "DeleteSnapshot", &[p("SnapshotId", &r.id)])
                    .await,
            ),
            "image" => ok_if_gone(
                self.ec2(&step, "DeregisterImage", &[p("ImageId", &r.id)])
                    .await,
            ),
            "instance" => {
                ok_if_gone(
                    self.ec2(&step, "TerminateInstances", &[p("InstanceId.1", &r.id)])
                        .await,
                )?;
                for _ in 0..150 {
                    match self.describe_instance(&step, &r.id).await {
                        Ok(x) if x.get("instanceState/name").as_deref() == Some("terminated") => {
                            return Ok(())
                        }
                        Ok(x) if x.get("instanceState/name").is_none() => return Ok(()),
                        Err(e) if gone(&e) => return Ok(()),
                        Err(e) => return Err(e),
                        Ok(_) => http::pause(Duration::from_millis(400), cancel).await?,
                    }
                }
                Err(step.fail("the instance is still not terminated after 60 s"))
            }
            "volume" => {
                let _ = self
                    .ec2(
                        &step,
                        "DetachVolume",
                        &[p("VolumeId", &r.id), p("Force", "true")],
                    )
                    .await;
                for _ in 0..150 {
                    match self
                        .ec2(&step, "DescribeVolumes", &[p("VolumeId.1", &r.id)])
                        .await
                    {
                        Ok(x) if x.get("volumeSet/item/status").as_deref() == Some("in-use") => {
                            http::pause(Duration::from_millis(400), cancel).await?
                        }
                        Err(e) if gone(&e) => return Ok(()),
                        _ => break,
                    }
                }
                ok_if_gone(
                    self.ec2(&step, "DeleteVolume", &[p("VolumeId", &r.id)])
                        .await,
                )
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_skipped_and_the_tail_padded() {
        let mut v = vec![0u8; 3 * BLOCK + 100];
        v[BLOCK + 5] = 1;
        v[3 * BLOCK + 99] = 7;
        let b = blocks_of(8 * BLOCK as u64, &Bytes::from(v));
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].0, 9);
        assert_eq!(b[1].0, 11);
        assert_eq!(b[1].1.len(), BLOCK);
        assert_eq!(b[1].1[99], 7);
        assert_eq!(b[1].2, <[u8; 32]>::from(sha2::Sha256::digest(&b[1].1)));
    }

    #[test]
    fn ec2_xml_paths() {
        let step = Step::new("t", "p");
        let x = Xml::parse(&step, b"<RunInstancesResponse><reservationId>r-1</reservationId><instancesSet><item><instanceId>i-123</instanceId><instanceState><name>pending</name></instanceState><placement><availabilityZone>us-east-1a</availabilityZone></placement></item></instancesSet></RunInstancesResponse>").unwrap();
        assert_eq!(
            x.get("instancesSet/item/instanceId").as_deref(),
            Some("i-123")
        );
        assert_eq!(x.get("instanceState/name").as_deref(), Some("pending"));
        assert_eq!(
            x.get("placement/availabilityZone").as_deref(),
            Some("us-east-1a")
        );
        assert!(Xml::parse(&step, b"<a><b>").is_ok());
    }
}
