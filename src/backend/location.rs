//! Where a repository lives, as the operator writes it: a local directory,
//! `s3://BUCKET[/PREFIX]` or `sftp://[USER@]HOST[:PORT]/PATH`, with options
//! after a `?` (`endpoint`, `region`, `profile`, `virtual-host`, `key`,
//! `upload-limit`). Secrets never belong in the address: credentials come
//! from the standard environment and files (AWS_*, ~/.aws, ssh keys and the
//! agent), so an address can be printed, logged and kept in a job file.

use crate::usage;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A parsed repository address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Remote(Remote),
}

/// A repository on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub service: Service,
    /// The object-name prefix (S3) or the directory (SFTP), no leading or
    /// trailing `/`; empty for a bucket's root.
    pub path: String,
    pub options: RemoteOptions,
    /// The address as given, without its options: for messages.
    pub display: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    S3 {
        bucket: String,
    },
    Sftp {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

/// What an address may say after its `?`; each has a default from the
/// standard environment where one exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteOptions {
    /// S3 endpoint (default: AWS_ENDPOINT_URL, else AWS itself).
    pub endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1).
    pub region: Option<String>,
    /// Profile of the shared AWS files (default: AWS_PROFILE, else default).
    pub profile: Option<String>,
    /// Virtual-hosted-style requests (`bucket.host`); path style otherwise,
    /// which MinIO-style endpoints need.
    pub virtual_host: bool,
    /// SSH private key for SFTP (default: ssh's own choice and the agent).
    pub key: Option<PathBuf>,
    /// Upload cap in bytes per second.
    pub upload_limit: Option<u64>,
}

impl Location {
    /// Parses an address; anything without an `s3://` or `sftp://` scheme
    /// is a local path. Bad addresses are usage errors (exit status 2).
    pub fn parse(address: &Path) -> Result<Location> {
        let Some(text) = address.to_str() else {
            return Ok(Location::Local(address.to_path_buf()));
        };
        let (scheme, rest) = match text.split_once("://") {
            Some((s, rest)) if s == "s3" || s == "sftp" => (s, rest),
            Some((s, _)) if !s.contains('/') && !s.is_empty() => {
                return Err(usage!(
                    "repository {text}: unknown scheme {s}://; use a local path, s3://BUCKET/PREFIX or sftp://USER@HOST/PATH"
                ))
            }
            _ => return Ok(Location::Local(address.to_path_buf())),
        };
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let options = parse_options(text, query)?;
        let (authority, path) = match body.split_once('/') {
            Some((a, p)) => (a, p.trim_matches('/')),
            None => (body, ""),
        };
        if path.split('/').any(|c| c == ".." || c == ".") {
            return Err(usage!("repository {text}: the path may not hold . or .."));
        }
        let service = if scheme == "s3" {
            check_bucket(text, authority)?;
            if options.key.is_some() {
                return Err(usage!(
                    "repository {text}: key= is for sftp:// repositories"
                ));
            }
            Service::S3 {
                bucket: authority.to_string(),
            }
        } else {
            if path.is_empty() {
                return Err(usage!(
                    "repository {text}: name the directory on the server, as in sftp://backup@host/srv/volsnap"
                ));
            }
            let s3_only = options.endpoint.is_some()
                || options.region.is_some()
                || options.profile.is_some()
                || options.virtual_host;
            if s3_only {
                return Err(usage!(
                    "repository {text}: endpoint=, region=, profile= and virtual-host= are for s3:// repositories"
                ));
            }
            parse_ssh_authority(text, authority)?
        };
        Ok(Location::Remote(Remote {
            service,
            path: path.to_string(),
            options,
            display: format!("{scheme}://{body}")
                .trim_end_matches('/')
                .to_string(),
        }))
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Remote(_))
    }
}

/// `address` with an upload limit of `limit` bytes per second added
/// (`--upload-limit`, a job's `upload_limit`): a server's address only.
pub fn with_upload_limit(address: &Path, limit: Option<u64>) -> Result<PathBuf> {
    let Some(limit) = limit else {
        return Ok(address.to_path_buf());
    };
    if !Location::parse(address)?.is_remote() {
        return Err(usage!(
            "--upload-limit (upload_limit) caps uploads to a server; {} is a local directory (--bwlimit limits reading the volumes)",
            address.display()
        ));
    }
    let text = address.to_string_lossy();
    let joiner = if text.contains('?') { '&' } else { '?' };
    Ok(PathBuf::from(format!("{text}{joiner}upload-limit={limit}")))
}

fn check_bucket(text: &str, bucket: &str) -> Result<()> {
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !bucket.starts_with(['.', '-'])
        && !bucket.ends_with(['.', '-']);
    if !valid {
        return Err(usage!(
            "repository {text}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"
        ));
    }
    Ok(())
}

fn parse_ssh_authority(text: &str, authority: &str) -> Result<Service> {
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    if user.as_deref().is_some_and(|u| u.contains(':')) {
        return Err(usage!(
            "repository {text}: no password in the address; SFTP logs in with SSH keys (ssh-agent, ~/.ssh, or key=PATH)"
        ));
    }
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| usage!("repository {text}: {p:?} is not a port number"))?;
            (h, Some(port))
        }
        None => (host_port, None),
    };
    let plain = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !plain(host) || user.as_deref().is_some_and(|u| !plain(u)) {
        return Err(usage!(
            "repository {text}: {authority:?} is not USER@HOST[:PORT]"
        ));
    }
    Ok(Service::Sftp {
        user,
        host: host.to_string(),
        port,
    })
}

fn parse_options(text: &str, query: Option<&str>) -> Result<RemoteOptions> {
    let mut options = RemoteOptions::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "endpoint" => {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(usage!(
                        "repository {text}: endpoint= must be an http:// or https:// address"
                    ));
                }
                options.endpoint = Some(value.to_string());
            }
            "region" => options.region = Some(value.to_string()),
            "profile" => options.profile = Some(value.to_string()),
            "virtual-host" => {
                options.virtual_host = match value {
                    "" | "true" | "yes" => true,
                    "false" | "no" => false,
                    _ => return Err(usage!("repository {text}: virtual-host= takes true or false")),
                }
            }
            "key" => options.key = Some(PathBuf::from(value)),
            "upload-limit" => {
                options.upload_limit = Some(crate::fsutil::parse_size(value).map_err(|e| {
                    usage!("repository {text}: upload-limit={value}: {e}")
                })?)
            }
            "access-key" | "access_key_id" | "secret" | "secret-key" | "secret_access_key"
            | "password" | "session-token" => {
                return Err(usage!(
                    "repository address: credentials do not belong in it (it is printed and logged); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use a profile of ~/.aws/credentials"
                ))
            }
            other => {
                return Err(usage!(
                    "repository {text}: unknown option {other:?} (known: endpoint, region, profile, virtual-host, key, upload-limit)"
                ))
            }
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Location> {
        Location::parse(Path::new(s))
    }

    #[test]
    fn local_paths_stay_local() {
        for s in ["/backups", "relative/dir", "/srv/s3:/x", "dir?x=y"] {
            assert_eq!(parse(s).unwrap(), Location::Local(PathBuf::from(s)), "{s}");
        }
    }

    #[test]
    fn s3_addresses_with_options() {
        let Location::Remote(r) =
            parse("s3://my-bucket/hosts/a/?endpoint=http://127.0.0.1:9000&region=eu-west-1")
                .unwrap()
        else {
            panic!("not remote")
        };
        assert_eq!(
            r.service,
            Service::S3 {
                bucket: "my-bucket".into()
            }
        );
        assert_eq!(r.path, "hosts/a");
        assert_eq!(r.display, "s3://my-bucket/hosts/a");
        assert_eq!(r.options.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(r.options.region.as_deref(), Some("eu-west-1"));
        let Location::Remote(bare) = parse("s3://bucket").unwrap() else {
            panic!()
        };
        assert_eq!(bare.path, "");
    }

    #[test]
    fn sftp_addresses() {
        let Location::Remote(r) = parse("sftp://backup@host.example:2222/srv/volsnap").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            r.service,
            Service::Sftp {
                user: Some("backup".into()),
                host: "host.example".into(),
                port: Some(2222)
            }
        );
        assert_eq!(r.path, "srv/volsnap");
    }

    #[test]
    fn bad_addresses_are_usage_errors() {
        for bad in [
            "s3://Bad_Bucket/x",
            "s3://b",
            "s3://bucket/../x",
            "s3://bucket/x?secret=abc",
            "s3://bucket/x?endpoint=ftp://x",
            "s3://bucket/x?colour=blue",
            "sftp://host",
            "sftp://user:pw@host/x",
            "sftp://-oProxyCommand=x/y",
            "sftp://host/x?region=eu",
            "ftp://host/x",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), 2, "{bad}");
            assert!(!err.to_string().contains("abc"), "{bad}: secret echoed");
        }
    }
}
