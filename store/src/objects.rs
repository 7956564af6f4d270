//! Private object storage for generated images and data exports. Nothing
//! here is public: clients reach objects only through signed, expiring URLs
//! (`signed_url.rs`), so this type has no notion of a public URL.

use std::fmt;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use object_store::WriteMultipart;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::ObjectsError;

/// How long one storage call retries a failing bucket before it fails:
/// a few quick tries within 15 s (object_store's default keeps at it for
/// 3 minutes, past a job's timeout, so the job would die with its lease
/// instead of retrying with `store_unavailable` visible in its history).
fn retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(15),
    }
}

/// A bucket of private objects addressed by keys such as
/// `images/<uuid>.png`. Cheap to clone: clones share one backend.
#[derive(Clone)]
pub struct Objects {
    inner: Arc<dyn ObjectStore>,
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The backend's Display names it (e.g. `LocalFileSystem(file:///…)`)
        // without credentials.
        write!(f, "Objects({})", self.inner)
    }
}

impl Objects {
    /// Wraps any backend, so the S3-compatible store (Alibaba OSS) plugs in
    /// without this type knowing about it.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Objects {
        Objects { inner }
    }

    /// Files under `root`, created if missing: the embedded default, which
    /// must work on a fresh machine.
    pub fn local(root: &FsPath) -> Result<Objects, ObjectsError> {
        std::fs::create_dir_all(root)
            .map_err(|e| ObjectsError::Backend(format!("create {}: {e}", root.display())))?;
        let fs = LocalFileSystem::new_with_prefix(root)
            .map_err(|e| ObjectsError::Backend(format!("open {}: {e}", root.display())))?;
        Ok(Objects::new(Arc::new(fs)))
    }

    /// A private bucket in S3 or an S3-compatible service (Alibaba OSS,
    /// MinIO). With `virtual_hosted_style` (what OSS requires) the bucket
    /// goes into the host name: `https://<bucket>.<endpoint host>`.
    pub fn s3(options: &S3Options) -> Result<Objects, ObjectsError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_access_key_id(&options.access_key_id)
            .with_secret_access_key(&options.secret_access_key)
            .with_virtual_hosted_style_request(options.virtual_hosted_style)
            .with_allow_http(options.allow_http)
            .with_retry(retries());
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(bucket_endpoint(
                endpoint,
                &options.bucket,
                options.virtual_hosted_style,
            )?);
        }
        let s3 = builder
            .build()
            .map_err(|e| ObjectsError::Backend(format!("S3 bucket {}: {e}", options.bucket)))?;
        Ok(Objects::new(Arc::new(s3)))
    }

    /// Kept in this process only: for tests.
    pub fn memory() -> Objects {
        Objects::new(Arc::new(InMemory::new()))
    }

    /// Writes the whole object at once; readers never see a partial one.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ObjectsError> {
        let path = parse_key(key)?;
        self.inner
            .put(&path, bytes.into())
            .await
            .map_err(|e| backend_error("put", key, e))?;
        Ok(())
    }

    /// `None` when there is no such object: a purge may have removed it.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, ObjectsError> {
        let path = parse_key(key)?;
        let result = match self.inner.get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(backend_error("get", key, e)),
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|e| backend_error("get", key, e))?;
        Ok(Some(bytes))
    }

    /// Deleting what is already gone succeeds, so purges can be retried.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectsError> {
        let path = parse_key(key)?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend_error("delete", key, e)),
        }
    }

    /// Deletes every object under `prefix` (a folder, e.g. `refs/<id>/`);
    /// returns how many. Like `delete`, safe to repeat.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectsError> {
        use futures::TryStreamExt;
        let path = parse_key(prefix.trim_end_matches('/'))?;
        let keys: Vec<Path> = self
            .inner
            .list(Some(&path))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| backend_error("list", prefix, e))?;
        for key in &keys {
            match self.inner.delete(key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(backend_error("delete", key.as_ref(), e)),
            }
        }
        Ok(keys.len() as u64)
    }

    /// Starts writing an object part by part (a multipart upload on S3), so
    /// an object of any size passes through a few parts of memory; readers
    /// see it only once [`ObjectUpload::finish`] returns.
    pub async fn upload(&self, key: &str) -> Result<ObjectUpload, ObjectsError> {
        let path = parse_key(key)?;
        let upload = self
            .inner
            .put_multipart(&path)
            .await
            .map_err(|e| backend_error("upload", key, e))?;
        Ok(ObjectUpload {
            key: key.to_owned(),
            writer: WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES),
            bytes: 0,
        })
    }

    /// The objects under `prefix` (a folder, e.g. `exports/`), as the
    /// backend lists them (a page of 1,000 at a time on S3), in no order.
    pub fn list(&self, prefix: &str) -> Result<BoxStream<'static, ObjectsResult>, ObjectsError> {
        use futures::StreamExt;
        let path = parse_key(prefix.trim_end_matches('/'))?;
        let prefix = prefix.to_owned();
        Ok(self
            .inner
            .list(Some(&path))
            .map(move |meta| match meta {
                Ok(meta) => Ok(ObjectInfo {
                    key: meta.location.to_string(),
                    last_modified: meta.last_modified,
                    size: meta.size,
                }),
                Err(e) => Err(backend_error("list", &prefix, e)),
            })
            .boxed())
    }

    pub async fn exists(&self, key: &str) -> Result<bool, ObjectsError> {
        let path = parse_key(key)?;
        match self.inner.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(backend_error("head", key, e)),
        }
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    /// When it was written (S3: when its upload completed).
    pub last_modified: DateTime<Utc>,
    pub size: u64,
}

type ObjectsResult = Result<ObjectInfo, ObjectsError>;

/// The part size of uploads: S3's smallest but the last is 5 MiB, and at
/// most [`UPLOAD_PARTS_IN_FLIGHT`] are sent at once, so an upload holds
/// about 15 MiB however large the object.
const UPLOAD_PART_BYTES: usize = 5 * 1024 * 1024;
const UPLOAD_PARTS_IN_FLIGHT: usize = 2;

/// An object being written (see [`Objects::upload`]). Dropped without
/// [`ObjectUpload::finish`], the object is never written; call
/// [`ObjectUpload::abort`] to clean up the parts already sent at once
/// (S3 keeps them until a bucket lifecycle rule removes them).
pub struct ObjectUpload {
    key: String,
    writer: WriteMultipart,
    bytes: u64,
}

impl fmt::Debug for ObjectUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectUpload({}, {} bytes)", self.key, self.bytes)
    }
}

impl ObjectUpload {
    /// Appends `bytes`, waiting while too many parts are in flight.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ObjectsError> {
        self.writer
            .wait_for_capacity(UPLOAD_PARTS_IN_FLIGHT)
            .await
            .map_err(|e| backend_error("upload", &self.key, e))?;
        self.writer.write(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Sends the last part and completes the object.
    pub async fn finish(self) -> Result<u64, ObjectsError> {
        let key = self.key;
        self.writer
            .finish()
            .await
            .map_err(|e| backend_error("upload", &key, e))?;
        Ok(self.bytes)
    }

    /// Gives the upload up, removing the parts sent.
    pub async fn abort(self) -> Result<(), ObjectsError> {
        let key = self.key;
        self.writer
            .abort()
            .await
            .map_err(|e| backend_error("abort upload", &key, e))
    }
}

/// Where and how to reach an S3-compatible bucket. `Debug` leaves out the
/// secret key.
#[derive(Clone)]
pub struct S3Options {
    pub bucket: String,
    pub region: String,
    /// The service's region endpoint, e.g. `https://oss-cn-hangzhou.aliyuncs.com`;
    /// `None` for AWS itself.
    pub endpoint: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub virtual_hosted_style: bool,
    /// Plain-http endpoints: local test servers only.
    pub allow_http: bool,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish_non_exhaustive()
    }
}

/// object_store wants the bucket already in a virtual-hosted endpoint.
fn bucket_endpoint(
    endpoint: &str,
    bucket: &str,
    virtual_hosted: bool,
) -> Result<String, ObjectsError> {
    if !virtual_hosted {
        return Ok(endpoint.trim_end_matches('/').to_owned());
    }
    let (scheme, host) = endpoint
        .split_once("://")
        .ok_or_else(|| ObjectsError::Backend(format!("S3 endpoint {endpoint:?} has no scheme")))?;
    let host = host.trim_end_matches('/');
    if host.starts_with(&format!("{bucket}.")) {
        Ok(format!("{scheme}://{host}"))
    } else {
        Ok(format!("{scheme}://{bucket}.{host}"))
    }
}

fn backend_error(op: &str, key: &str, e: object_store::Error) -> ObjectsError {
    ObjectsError::Backend(format!("{op} {key}: {e}"))
}

/// Keys are relative, `/`-separated and stay under the store's root. A key
/// that could climb out of it (`..`) or that `object_store` would silently
/// rewrite (leading or trailing `/`, empty segments) is refused rather than
/// normalised, because it is a bug in whoever built it.
fn parse_key(key: &str) -> Result<Path, ObjectsError> {
    let invalid = |reason| ObjectsError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    if key.starts_with('/') {
        return Err(invalid("absolute; keys are relative to the store root"));
    }
    if key.contains("..") {
        return Err(invalid("contains \"..\""));
    }
    if key.ends_with('/') {
        return Err(invalid("ends with \"/\"; keys name objects, not folders"));
    }
    if key.contains('\\') {
        return Err(invalid("contains \"\\\"; use \"/\" between segments"));
    }
    Path::parse(key).map_err(|_| invalid("empty segment, \".\" segment or control character"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(objects: &Objects) {
        let key = "images/0190c0de-0000-7000-8000-000000000001.png";
        assert_eq!(objects.get(key).await.unwrap(), None);
        assert!(!objects.exists(key).await.unwrap());

        objects
            .put(key, Bytes::from_static(b"\x89PNG fake"))
            .await
            .unwrap();
        assert!(objects.exists(key).await.unwrap());
        assert_eq!(
            objects.get(key).await.unwrap(),
            Some(Bytes::from_static(b"\x89PNG fake"))
        );

        objects.put(key, Bytes::from_static(b"v2")).await.unwrap();
        assert_eq!(
            objects.get(key).await.unwrap(),
            Some(Bytes::from_static(b"v2"))
        );

        objects.delete(key).await.unwrap();
        assert!(!objects.exists(key).await.unwrap());
        assert_eq!(objects.get(key).await.unwrap(), None);
        // Already gone: still fine.
        objects.delete(key).await.unwrap();
    }

    #[tokio::test]
    async fn memory_round_trip() {
        round_trip(&Objects::memory()).await;
    }

    #[tokio::test]
    async fn local_round_trip_creates_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data").join("objects");
        let objects = Objects::local(&root).unwrap();
        assert!(root.is_dir());
        round_trip(&objects).await;
    }

    #[tokio::test]
    async fn local_objects_are_files_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let objects = Objects::local(dir.path()).unwrap();
        objects
            .put("exports/a.zip", Bytes::from_static(b"zip"))
            .await
            .unwrap();
        let on_disk = std::fs::read(dir.path().join("exports").join("a.zip")).unwrap();
        assert_eq!(on_disk, b"zip");

        // A second handle on the same root sees the same objects.
        let again = Objects::local(dir.path()).unwrap();
        assert!(again.exists("exports/a.zip").await.unwrap());
    }

    #[tokio::test]
    async fn unsafe_keys_are_refused_by_every_operation() {
        let objects = Objects::memory();
        for key in [
            "",
            "/etc/passwd",
            "../outside.png",
            "images/../../outside.png",
            "images/..",
            "images/",
            "images//a.png",
            "images/./a.png",
            "images\\a.png",
            "images/a\n.png",
        ] {
            let err = objects.put(key, Bytes::new()).await.unwrap_err();
            assert!(
                matches!(&err, ObjectsError::InvalidKey { key: k, .. } if k == key),
                "{key:?}: {err}"
            );
            assert!(matches!(
                objects.get(key).await,
                Err(ObjectsError::InvalidKey { .. })
            ));
            assert!(matches!(
                objects.delete(key).await,
                Err(ObjectsError::InvalidKey { .. })
            ));
            assert!(matches!(
                objects.exists(key).await,
                Err(ObjectsError::InvalidKey { .. })
            ));
        }
    }

    #[test]
    fn error_names_the_key_and_the_reason() {
        let err = parse_key("../x").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid object key "../x": contains "..""#
        );
    }

    #[test]
    fn operations_are_send_so_handlers_can_await_them() {
        fn assert_send<T: Send>(_: T) {}
        let objects = Objects::memory();
        assert_send(objects.put("a", Bytes::new()));
        assert_send(objects.get("a"));
        assert_send(objects.delete("a"));
        assert_send(objects.exists("a"));
    }

    #[test]
    fn virtual_hosted_endpoints_carry_the_bucket() {
        let e = |endpoint, virtual_hosted| bucket_endpoint(endpoint, "kiln-images", virtual_hosted);
        assert_eq!(
            e("https://oss-cn-hangzhou.aliyuncs.com", true).unwrap(),
            "https://kiln-images.oss-cn-hangzhou.aliyuncs.com"
        );
        assert_eq!(
            e("https://kiln-images.oss-cn-hangzhou.aliyuncs.com/", true).unwrap(),
            "https://kiln-images.oss-cn-hangzhou.aliyuncs.com"
        );
        assert_eq!(
            e("http://127.0.0.1:9000/", false).unwrap(),
            "http://127.0.0.1:9000"
        );
        assert!(e("oss-cn-hangzhou.aliyuncs.com", true).is_err());
    }

    /// The S3 wire format against a fake: signed PUT and GET of the
    /// object's path in the bucket, a 404 read as "no such object".
    #[tokio::test]
    async fn s3_puts_and_gets_signed_requests() {
        use wiremock::{
            Mock, MockServer, ResponseTemplate,
            matchers::{header_exists, method, path},
        };
        let server = MockServer::start().await;
        let key = "images/0190c0de-0000-7000-8000-000000000002.png";
        Mock::given(method("PUT"))
            .and(path(format!("/kiln-images/{key}")))
            .and(header_exists("authorization"))
            .and(header_exists("x-amz-content-sha256"))
            .respond_with(ResponseTemplate::new(200).insert_header("etag", "\"1\""))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/kiln-images/{key}")))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("etag", "\"1\"")
                    .insert_header("last-modified", "Wed, 25 Nov 2026 12:00:00 GMT")
                    .set_body_bytes(b"\x89PNG fake".to_vec()),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/kiln-images/images/missing.png"))
            .respond_with(
                ResponseTemplate::new(404).set_body_string(
                    "<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>",
                ),
            )
            .mount(&server)
            .await;
        let objects = Objects::s3(&S3Options {
            bucket: "kiln-images".into(),
            region: "oss-cn-hangzhou".into(),
            endpoint: Some(server.uri()),
            access_key_id: "LTAI-test".into(),
            secret_access_key: "test-secret".into(),
            virtual_hosted_style: false,
            allow_http: true,
        })
        .unwrap();
        objects
            .put(key, Bytes::from_static(b"\x89PNG fake"))
            .await
            .unwrap();
        assert_eq!(
            objects.get(key).await.unwrap(),
            Some(Bytes::from_static(b"\x89PNG fake"))
        );
        assert_eq!(objects.get("images/missing.png").await.unwrap(), None);
        let put = &server.received_requests().await.unwrap()[0];
        let auth = put.headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=LTAI-test/"),
            "{auth}"
        );
        assert!(auth.contains("/oss-cn-hangzhou/s3/aws4_request"), "{auth}");
        assert!(!format!("{objects:?}").contains("test-secret"));
    }
}
