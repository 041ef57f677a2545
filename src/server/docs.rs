//! `/v1/docs`: locks and protection marks (see `lifeboat_core::store::docs`).
//! Who may do what: any token lists; an append token takes and releases
//! writer locks and protects backups; only admin takes a gc lock, removes
//! another's protection or breaks a gc lock.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use lifeboat_core::store::docs::{DocKey, DocKind, MAX_DOC_BYTES};
use lifeboat_core::store::http::{DocEntry, DocsResponse, DOCS_PAGE};
use lifeboat_core::store::{ObjectKey, Store};

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

fn visible(grant: &Grant, key: &DocKey) -> bool {
    key.vm().is_none_or(|vm| grant.may_see(vm))
}

fn parse(key: &str, grant: &Grant) -> ApiResult<DocKey> {
    let key = DocKey::parse(key)?;
    if !visible(grant, &key) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no document {key}"),
        ));
    }
    Ok(key)
}

pub async fn put_doc(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    Path(key): Path<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    let key = parse(&key, &grant)?;
    need(role_to_change(&key, false), grant.role)?;
    let body = read_body(body, MAX_DOC_BYTES, &format!("document {key}")).await?;
    // Documents are JSON objects; anything else is refused, not stored.
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("document {key} is not a JSON object"),
            ))
        }
    }
    if let DocKey::Protection(m) = &key {
        // Only a backup this repository holds can be protected.
        if !st
            .store
            .missing(&[ObjectKey::Manifest(m.clone())])
            .await?
            .is_empty()
        {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no backup {}: push it before protecting it", m.object_key()),
            ));
        }
    }
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
    st.store.delete_doc(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct DocsQuery {
    kind: String,
    after: Option<String>,
}

pub async fn list_docs(
    State(st): State<Shared>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<DocsQuery>,
) -> ApiResult<Json<DocsResponse>> {
    let kind = DocKind::parse(&q.kind)?;
    let mut docs: Vec<DocEntry> = st
        .store
        .list_docs(kind)
        .await?
        .into_iter()
        .filter(|d| visible(&grant, &d.key))
        .map(|d| DocEntry {
            key: d.key.key(),
            body: String::from_utf8_lossy(&d.body).into_owned(),
            modified: d.modified,
        })
        .collect();
    docs.sort_by(|a, b| a.key.cmp(&b.key));
    let start = match &q.after {
        Some(a) => docs.partition_point(|d| d.key <= *a),
        None => 0,
    };
    let total = docs.len();
    let end = (start + DOCS_PAGE).min(total);
    let page: Vec<DocEntry> = docs.drain(start..end).collect();
    let next = (end < total)
        .then(|| page.last().map(|d| d.key.clone()))
        .flatten();
    Ok(Json(DocsResponse { docs: page, next }))
}
