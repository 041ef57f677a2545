//! A backup's image as a stream of pieces, read straight from a store (the
//! local repository or a remote) in order: chunks fetched a few at a time
//! ahead, each decoded and hashed against its id before it is used, and
//! all-zero chunks never fetched. Nothing is staged on disk.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};

use crate::error::{Error, Result};
use crate::format::keys::ObjectKey;
use crate::format::{chunk, Id, Index, Manifest, ManifestKey};
use crate::store::DynStore;

/// How many chunks are fetched ahead of the one being uploaded.
const AHEAD: usize = 8;

pub enum Piece {
    Data(Bytes),
    /// This many zero bytes (a zero chunk, never stored).
    Zero(u64),
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Data(b) => b.len() as u64,
            Piece::Zero(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One volume of the set being restored: its backup and where its chunks are.
#[derive(Clone)]
pub struct VolumeImage {
    pub key: ManifestKey,
    pub manifest: Manifest,
    pub index: Arc<Index>,
    pub store: DynStore,
}

impl std::fmt::Debug for VolumeImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VolumeImage({} from {})",
            self.key.id,
            self.store.describe()
        )
    }
}

impl VolumeImage {
    /// The image's pieces from offset 0, in order, each with its offset.
    pub fn pieces(&self) -> impl Stream<Item = Result<(u64, Piece)>> + Send + 'static {
        let (store, index) = (self.store.clone(), self.index.clone());
        stream::iter(0..index.chunks.len())
            .map(move |i| {
                let (store, index) = (store.clone(), index.clone());
                async move {
                    let off = i as u64 * index.chunk_size;
                    let len = index.chunk_len(i);
                    let id = index.chunks[i];
                    if id.is_zero() {
                        return Ok((off, Piece::Zero(len)));
                    }
                    let data = fetch_chunk(&store, &id).await?;
                    index.check_chunk_len(i, data.len())?;
                    Ok((off, Piece::Data(data)))
                }
            })
            .buffered(AHEAD)
    }
}

/// One chunk's raw bytes, verified against its id (retrying a dropped
/// connection to the store).
pub async fn fetch_chunk(store: &DynStore, id: &Id) -> Result<Bytes> {
    let key = ObjectKey::Chunk(*id);
    let data = crate::retry::with_retry(4, || store.get(&key))
        .await?
        .ok_or_else(|| key.missing())?;
    let id = *id;
    tokio::task::spawn_blocking(move || chunk::decode(&id, &data).map(Bytes::from))
        .await
        .map_err(|e| Error::Internal(format!("chunk decoding failed: {e}")))?
}

/// A shared buffer of zeros, sliced for zero pieces.
pub fn zeros(len: usize) -> Bytes {
    static ZEROS: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let z = ZEROS.get_or_init(|| Bytes::from(vec![0u8; chunk::MAX_CHUNK]));
    if len <= z.len() {
        z.slice(..len)
    } else {
        Bytes::from(vec![0u8; len])
    }
}
