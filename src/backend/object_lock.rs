//! S3 Object Lock, for immutable repositories: the bucket's lock
//! configuration, and the retention of single objects. opendal moves the
//! objects but has no call for retention, so these few requests are signed
//! here with reqsign (the AWS SigV4 signer opendal itself uses, with the
//! same credential sources: AWS_* variables, ~/.aws profiles) and sent with
//! ureq.
//!
//! Retention is set after an object is written (`PutObjectRetention`, mode
//! COMPLIANCE: nobody, not even the account's root, shortens or removes it)
//! rather than with the upload's headers, so uploads stay plain PUTs that no
//! server asks a checksum of; `PutObjectRetention` itself carries the
//! Content-MD5 S3 demands.

use anyhow::{bail, Context, Result};
use base64::Engine;
use reqsign_aws_v4::{Credential, DefaultCredentialProvider, RequestSigner};
use reqsign_core::{Context as SignContext, OsEnv, Signer};
use std::time::{Duration, SystemTime};

/// What a bucket's Object Lock configuration allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockConfiguration {
    pub enabled: bool,
    /// A default retention rule, which would lock every object written,
    /// the repository's lock objects included.
    pub default_retention: Option<String>,
}

/// A server's answer: status, headers (names in lower case) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// Signed requests to one bucket, under one prefix.
pub struct ObjectLock {
    signer: Signer<Credential>,
    /// `scheme://host[:port]`, and the bucket's place in URLs.
    endpoint: String,
    bucket: String,
    virtual_host: bool,
    /// The repository's prefix, percent-encoded, without slashes around.
    prefix: String,
    display: String,
    agent: ureq::Agent,
}

/// Percent-encodes one path segment (RFC 3986 unreserved characters stay).
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ObjectLock {
    pub fn new(
        endpoint: Option<&str>,
        region: &str,
        profile: Option<&str>,
        bucket: &str,
        prefix: &str,
        virtual_host: bool,
        display: &str,
    ) -> Self {
        let mut credentials = DefaultCredentialProvider::builder()
            .no_sso()
            .no_web_identity()
            .no_process()
            .no_ecs()
            .no_imds();
        if let Some(profile) = profile {
            credentials = credentials.with_profile(profile);
        }
        let context = SignContext::new()
            .with_file_read(reqsign_file_read_tokio::TokioFileRead)
            .with_env(OsEnv);
        let endpoint = endpoint
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        Self {
            signer: Signer::new(
                context,
                credentials.build(),
                RequestSigner::new("s3", region),
            ),
            endpoint,
            bucket: bucket.to_string(),
            virtual_host,
            prefix: prefix
                .split('/')
                .filter(|s| !s.is_empty())
                .map(encode)
                .collect::<Vec<_>>()
                .join("/"),
            display: display.to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
        }
    }

    /// The URL of the bucket (`object` empty) or of an object of the
    /// repository.
    fn url(&self, object: &str, query: &str) -> String {
        let mut path = String::new();
        if !object.is_empty() {
            if !self.prefix.is_empty() {
                path.push('/');
                path.push_str(&self.prefix);
            }
            // Object names are plain (backend::check_name): nothing to encode.
            path.push('/');
            path.push_str(object);
        } else {
            path.push('/');
        }
        let base = if self.virtual_host {
            let (scheme, host) = self
                .endpoint
                .split_once("://")
                .unwrap_or(("https", &self.endpoint));
            format!("{scheme}://{}.{host}", self.bucket)
        } else {
            format!("{}/{}", self.endpoint, encode(&self.bucket))
        };
        let path = if self.virtual_host || !object.is_empty() {
            path
        } else {
            String::new()
        };
        format!("{base}{path}{query}")
    }

    /// Sends one signed request; the status, headers and body.
    fn send(
        &self,
        runtime: &tokio::runtime::Runtime,
        method: &str,
        url: &str,
        body: &[u8],
        extra: &[(&str, String)],
    ) -> Result<Answer> {
        use sha2::Digest;
        let mut builder = http::Request::builder().method(method).uri(url).header(
            "x-amz-content-sha256",
            hex::encode(sha2::Sha256::digest(body)),
        );
        for (name, value) in extra {
            builder = builder.header(*name, value);
        }
        let (mut parts, ()) = builder
            .body(())
            .context("internal error: an Object Lock request")?
            .into_parts();
        runtime
            .block_on(self.signer.sign(&mut parts, None))
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot sign a request to {} (are AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile, set?): {e}",
                    self.display
                )
            })?;
        let mut request = self.agent.request(method, &parts.uri.to_string());
        for (name, value) in &parts.headers {
            if let Ok(value) = value.to_str() {
                request = request.set(name.as_str(), value);
            }
        }
        let response = match request.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => bail!("{} does not answer: {e}", self.display),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|n| {
                response
                    .header(&n)
                    .map(|v| (n.to_lowercase(), v.to_string()))
            })
            .collect();
        let body = response.into_string().unwrap_or_default();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// The bucket's Object Lock configuration.
    pub fn configuration(&self, runtime: &tokio::runtime::Runtime) -> Result<LockConfiguration> {
        let Answer { status, body, .. } =
            self.send(runtime, "GET", &self.url("", "?object-lock"), b"", &[])?;
        match status {
            200 => Ok(LockConfiguration {
                enabled: element(&body, "ObjectLockEnabled").as_deref() == Some("Enabled"),
                default_retention: element(&body, "DefaultRetention").map(|rule| {
                    let mode = element(&rule, "Mode").unwrap_or_default();
                    let days = element(&rule, "Days")
                        .map(|d| format!("{d} days"))
                        .or_else(|| element(&rule, "Years").map(|y| format!("{y} years")))
                        .unwrap_or_default();
                    format!("{mode} {days}").trim().to_string()
                }),
            }),
            404 => Ok(LockConfiguration {
                enabled: false,
                default_retention: None,
            }),
            _ => bail!(
                "{} refused to say whether Object Lock is enabled (HTTP {status}{})",
                self.display,
                server_says(&body)
            ),
        }
    }

    /// Retains `object` until `until` (never shortening a longer retention:
    /// S3 refuses that in COMPLIANCE mode, and the refusal is checked).
    pub fn retain(
        &self,
        runtime: &tokio::runtime::Runtime,
        object: &str,
        until: SystemTime,
    ) -> Result<()> {
        let until: chrono::DateTime<chrono::Utc> = until.into();
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            until.format("%Y-%m-%dT%H:%M:%SZ")
        );
        use md5::Digest;
        let md5 =
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body.as_bytes()));
        let Answer {
            status, body: text, ..
        } = self.send(
            runtime,
            "PUT",
            &self.url(object, "?retention"),
            body.as_bytes(),
            &[
                ("content-md5", md5),
                ("content-type", "application/xml".into()),
            ],
        )?;
        if status == 200 {
            return Ok(());
        }
        // A longer retention set before (by a backup with a later clock)
        // is as good.
        if let Ok(Some(current)) = self.retained_until(runtime, object) {
            if current >= until.into() {
                return Ok(());
            }
        }
        bail!(
            "{} refused to retain {object} (HTTP {status}{}); is Object Lock enabled on the bucket?",
            self.display,
            server_says(&text)
        )
    }

    /// Until when `object` is retained; `None` when it is not (or no
    /// longer exists).
    pub fn retained_until(
        &self,
        runtime: &tokio::runtime::Runtime,
        object: &str,
    ) -> Result<Option<SystemTime>> {
        let Answer {
            status, headers, ..
        } = self.send(runtime, "HEAD", &self.url(object, ""), b"", &[])?;
        match status {
            200 => {}
            404 => return Ok(None),
            _ => bail!(
                "{} refused to describe {object} (HTTP {status})",
                self.display
            ),
        }
        let Some((_, until)) = headers
            .iter()
            .find(|(n, _)| n == "x-amz-object-lock-retain-until-date")
        else {
            return Ok(None);
        };
        let until = chrono::DateTime::parse_from_rfc3339(until).with_context(|| {
            format!(
                "{} gave {object} a retention date that is not one: {until:?}",
                self.display
            )
        })?;
        Ok(Some(until.with_timezone(&chrono::Utc).into()))
    }
}

/// The text of the first `<name>…</name>` in `xml` (the answers here are
/// small and flat; their text is only compared or shown).
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(xml[start..end].trim().to_string())
}

/// The server's error code, briefly, for a message.
fn server_says(body: &str) -> String {
    element(body, "Code")
        .map(|c| format!(", {}", c.chars().take(60).collect::<String>()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_bucket_and_the_prefixed_object() {
        let lock = ObjectLock::new(
            Some("http://127.0.0.1:9000/"),
            "us-east-1",
            None,
            "backups",
            "hosts/a b",
            false,
            "s3://backups/hosts/a b",
        );
        assert_eq!(
            lock.url("", "?object-lock"),
            "http://127.0.0.1:9000/backups?object-lock"
        );
        assert_eq!(
            lock.url("data/ab/abcd", "?retention"),
            "http://127.0.0.1:9000/backups/hosts/a%20b/data/ab/abcd?retention"
        );
        let aws = ObjectLock::new(None, "eu-west-1", None, "b", "", true, "s3://b");
        assert_eq!(
            aws.url("config", ""),
            "https://b.s3.eu-west-1.amazonaws.com/config"
        );
    }

    #[test]
    fn the_lock_configuration_is_read_from_its_xml() {
        let xml = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>7</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
        assert_eq!(
            element(xml, "ObjectLockEnabled").as_deref(),
            Some("Enabled")
        );
        let rule = element(xml, "DefaultRetention").unwrap();
        assert_eq!(element(&rule, "Days").as_deref(), Some("7"));
        assert_eq!(element(xml, "Missing"), None);
    }
}
