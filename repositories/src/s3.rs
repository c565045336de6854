//! S3 (MinIO in production): trained models and their manifests.

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use crate::{RepoError, RepoResult};

/// How to reach the object store.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub timeout: std::time::Duration,
}

/// A client bound to Marquee's bucket.
#[derive(Clone)]
pub struct ObjectStore {
    client: Client,
    bucket: String,
}

fn s3_error(e: impl std::error::Error) -> RepoError {
    // The SDK's Display is terse ("service error"); the source chain says why.
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    RepoError::S3(message)
}

impl ObjectStore {
    pub fn new(settings: &S3Settings) -> Self {
        let credentials = Credentials::new(
            &settings.access_key,
            &settings.secret_key,
            None,
            None,
            "marquee",
        );
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .operation_timeout(settings.timeout)
            .connect_timeout(std::time::Duration::from_secs(3))
            .build();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&settings.endpoint)
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            // MinIO, Garage and s3s-fs address buckets by path, not by DNS name.
            .force_path_style(true)
            .timeout_config(timeouts)
            .build();
        Self {
            client: Client::from_conf(config),
            bucket: settings.bucket.clone(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Create the bucket unless it exists.
    pub async fn ensure_bucket(&self) -> RepoResult<()> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let code = e.as_service_error().and_then(|s| {
                    aws_sdk_s3::error::ProvideErrorMetadata::code(s).map(str::to_owned)
                });
                match code.as_deref() {
                    Some("BucketAlreadyOwnedByYou") | Some("BucketAlreadyExists") => Ok(()),
                    _ => Err(s3_error(e)),
                }
            }
        }
    }

    pub async fn ping(&self) -> RepoResult<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> RepoResult<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> RepoResult<Vec<u8>> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    RepoError::NotFound(format!("s3://{}/{key}", self.bucket))
                } else {
                    s3_error(e)
                }
            })?;
        let bytes = output.body.collect().await.map_err(s3_error)?;
        Ok(bytes.into_bytes().to_vec())
    }

    /// Keys under `prefix`, following continuation tokens.
    pub async fn list(&self, prefix: &str) -> RepoResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let output = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(s3_error)?;
            keys.extend(
                output
                    .contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match output.next_continuation_token() {
                Some(next) if output.is_truncated().unwrap_or(false) => {
                    token = Some(next.to_owned())
                }
                _ => break,
            }
        }
        Ok(keys)
    }

    pub async fn delete(&self, key: &str) -> RepoResult<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(s3_error)?;
        Ok(())
    }
}
