//! Blob storage for the sandbox: uploads stream to files in a private temporary directory and
//! downloads stream back, so blobs of any size cost no memory. The directory goes with the store.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

#[derive(Clone)]
pub struct Blob {
    pub filename: String,
    pub size: u64,
    pub path: PathBuf,
}

pub struct Blobs {
    dir: PathBuf,
    next: AtomicU64,
    stored: Mutex<HashMap<u64, Blob>>,
}

impl Blobs {
    pub fn new() -> io::Result<Blobs> {
        let dir = std::env::temp_dir().join(format!("uem-sandbox-{}-{:016x}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir)?;
        Ok(Blobs { dir, next: AtomicU64::new(9000), stored: Mutex::new(HashMap::new()) })
    }

    /// Streams `body` to a new blob; returns its id and size.
    pub async fn upload(&self, filename: &str, body: Body) -> io::Result<(u64, u64)> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(id.to_string());
        let result = async {
            let mut file = tokio::fs::File::create(&path).await?;
            let mut stream = body.into_data_stream();
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(io::Error::other)?;
                size += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            Ok::<_, io::Error>(size)
        }
        .await;
        match result {
            Ok(size) => {
                let blob = Blob { filename: filename.to_owned(), size, path };
                self.stored.lock().expect("not poisoned").insert(id, blob);
                Ok((id, size))
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(e)
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<Blob> {
        self.stored.lock().expect("not poisoned").get(&id).cloned()
    }

    pub async fn delete(&self, id: u64) -> bool {
        let removed = self.stored.lock().expect("not poisoned").remove(&id);
        match removed {
            Some(blob) => {
                let _ = tokio::fs::remove_file(&blob.path).await;
                true
            }
            None => false,
        }
    }
}

impl Drop for Blobs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
