//! `/v1/docs`: locks and protection marks (see `lifeboat_core::format::docs`).
//! Who may do what: any token lists (a scoped token its own site's
//! documents and, redacted, the gc's lock); an append token takes,
//! refreshes and releases its own writer locks and protects its backups;
//! only admin takes a gc lock, removes another's protection or breaks
//! another's lock (`locks.rs`).

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;

use lifeboat_core::format::docs::{DocKey, DocKind, MAX_DOC_BYTES};
use lifeboat_core::format::refs::exact_time;
use lifeboat_core::lock::LockInfo;
use lifeboat_core::store::http::{DocEntry, DocsResponse, DOCS_PAGE};
use lifeboat_core::store::{ObjectKey, Store};

use super::locks::{self, Refusal, Sight};
use super::tokens::{Grant, Role};
use super::{need, read_body, ApiError, ApiResult, Shared};

/// The role a change to `key` needs.
fn role_to_change(key: &DocKey, removing: bool) -> Role {
    match key {
        DocKey::Lock(name) if name.starts_with("gc-") => Role::Admin,
        DocKey::Lock(_) => Role::Append,
        DocKey::Protection(_) if removing => Role::Admin,
        DocKey::Protection(_) => Role::Append,
    }
}

fn visible_by_name(grant: &Grant, key: &DocKey) -> bool {
    key.vm().is_none_or(|vm| grant.may_see(vm))
}

fn parse(key: &str, grant: &Grant) -> ApiResult<DocKey> {
    let key = DocKey::parse(key)?;
    if !visible_by_name(grant, &key) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no document {key}"),
        ));
    }
    Ok(key)
}

fn refused(key: &DocKey, r: Refusal) -> ApiError {
    match r {
        Refusal::NotYours => ApiError::new(
            StatusCode::FORBIDDEN,
            format!("lock {key} belongs to another token: only its holder or an admin may change it"),
        ),
        Refusal::Broken(at) => ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "lock {key} was broken by the server's admin at {}: the run that held it must start again",
                exact_time(at)
            ),
        ),
        Refusal::TooMany => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this token holds {} live locks already: release one (or wait {} min for a dead one to expire)",
                locks::MAX_LOCKS_PER_TOKEN,
                lifeboat_core::lock::STALE.as_secs() / 60
            ),
        ),
    }
}

/// Makes sure the registry knows a lock found on disk (one written by a
/// lifeboat on the server's host, or before a restart).
async fn learn(
    st: &Shared,
    key: &DocKey,
    modified: chrono::DateTime<chrono::Utc>,
) -> ApiResult<()> {
    if matches!(key, DocKey::Lock(_)) && !st.locks.knows(key) {
        if let Some(body) = st.store.read_doc(key).await? {
            st.locks.learn(key, &body, modified);
        }
    }
    Ok(())
}

pub async fn put_doc(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let key = parse(&key, &grant)?;
    need(role_to_change(&key, false), grant.role)?;
    let body = read_body(
        &st,
        &headers,
        body,
        MAX_DOC_BYTES,
        &format!("document {key}"),
    )
    .await?;
    // Documents are JSON objects; anything else is refused, not stored.
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("document {key} is not a JSON object"),
            ))
        }
    }
    let body = match &key {
        DocKey::Protection(m) => {
            // Only a backup this repository holds, and the token may see,
            // can be protected.
            let held = st
                .store
                .missing(&[ObjectKey::Manifest(m.clone())])
                .await?
                .is_empty();
            if !held {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no backup {}: push it before protecting it", m.object_key()),
                ));
            }
            body
        }
        DocKey::Lock(_) => {
            // A lock lifeboat understands, or nothing: junk could never
            // be told from a live holder.
            if LockInfo::from_doc(&key, &body).is_none() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("document {key} is not a lock (kind, host, pid, what, since; kind as its name says)"),
                ));
            }
            let now = chrono::Utc::now();
            if !st.locks.knows(&key) {
                learn(&st, &key, now).await?;
            }
            let stamp = st
                .locks
                .check_put(&key, &grant, now)
                .map_err(|r| refused(&key, r))?;
            let stamped = locks::stamped(&body, &stamp).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("document {key} is not a JSON object"),
                )
            })?;
            st.locks.put_done(&key, stamp, now);
            Bytes::from(stamped)
        }
    };
    st.store.put_doc(&key, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_doc(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    let key = parse(&key, &grant)?;
    need(role_to_change(&key, true), grant.role)?;
    if let DocKey::Lock(_) = &key {
        learn(&st, &key, chrono::Utc::now()).await?;
        st.locks
            .check_delete(&key, &grant)
            .map_err(|r| refused(&key, r))?;
    }
    st.store.delete_doc(&key).await?;
    if let DocKey::Lock(_) = &key {
        st.locks.deleted(&key, &grant, chrono::Utc::now());
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct DocsQuery {
    kind: String,
    after: Option<String>,
}

/// One page of documents. The names are listed, filtered and paged
/// first; only the page's documents are read (a listing of many locks
/// costs its names, not every body per page).
pub async fn list_docs(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<DocsQuery>,
) -> ApiResult<Json<DocsResponse>> {
    let kind = DocKind::parse(&q.kind)?;
    let names = st.store.doc_names(kind).await?;
    if kind == DocKind::Lock {
        let present: HashSet<String> = names
            .iter()
            .filter_map(|(k, _)| match k {
                DocKey::Lock(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        st.locks.retain(&present);
        for (k, modified) in &names {
            learn(&st, k, *modified).await?;
        }
    }
    let shown: Vec<(DocKey, chrono::DateTime<chrono::Utc>, Sight)> = names
        .into_iter()
        .filter(|(k, _)| visible_by_name(&grant, k))
        .map(|(k, m)| {
            let sight = match &k {
                DocKey::Lock(_) => st.locks.sight(&k, &grant),
                DocKey::Protection(_) => Sight::Full,
            };
            (k, m, sight)
        })
        .filter(|(_, _, s)| *s != Sight::Hidden)
        .collect();
    let start = match &q.after {
        Some(a) => shown.partition_point(|(k, _, _)| k.key() <= *a),
        None => 0,
    };
    let total = shown.len();
    let end = (start + DOCS_PAGE).min(total);
    let mut page = Vec::new();
    for (k, modified, sight) in &shown[start..end] {
        let Some(body) = st.store.read_doc(k).await? else {
            continue;
        };
        let body = match (k, grant.role) {
            (DocKey::Lock(_), r) if r < Role::Admin => locks::shown(&body, sight, *modified),
            _ => String::from_utf8_lossy(&body).into_owned(),
        };
        page.push(DocEntry {
            key: k.key(),
            body,
            modified: *modified,
        });
    }
    let next = (end < total)
        .then(|| shown.get(end - 1).map(|(k, _, _)| k.key()))
        .flatten();
    Ok(Json(DocsResponse { docs: page, next }))
}
