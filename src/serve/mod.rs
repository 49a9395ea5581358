//! `volsnap serve`: a read-only dashboard over repositories, what their
//! backups say of themselves, and this host's own jobs and run log.
//!
//! Safe by default, since any local user can reach 127.0.0.1:
//! - every request needs the token (a bearer header, or the session cookie
//!   a one-time login link sets: HttpOnly, SameSite=Strict);
//! - the Host header must name the listening address (DNS rebinding);
//! - off loopback it needs TLS, unless told `--insecure-http`;
//! - the repository is only read (no lock, no note, no cache in it), and
//!   no identity is ever loaded: an encrypted repository shows what its
//!   write key can see;
//! - every string from the repository is escaped by the templates, numbers
//!   are range-checked before they are plotted, and the
//!   Content-Security-Policy allows no script at all.

mod chart;
mod host;
mod model;
mod pages;

use crate::cancel::Cancel;
use crate::jobs::contents::{self, Contents};
use anyhow::{Context, Result};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use model::Model;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How `volsnap serve` was asked to run.
pub struct ServeOptions {
    /// The repositories shown, in this order (at least one).
    pub repos: Vec<PathBuf>,
    /// This host's configuration file (its jobs; none when missing) and
    /// state directory (its run log).
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// Rules whose dry run the repository pages show (what a prune would
    /// free); without them, this host's jobs' retention.
    pub prune_policy: Option<crate::repo::retention::Policy>,
    pub listen: SocketAddr,
    /// Names clients reach the server by, besides its address.
    pub server_names: Vec<String>,
    pub token_file: PathBuf,
    /// A certificate chain and its key, both PEM.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub insecure_http: bool,
    pub overdue_after: Duration,
    /// How long what was read of the repository is shown before it is
    /// read again.
    pub refresh: Duration,
}

const SESSION_COOKIE: &str = "volsnap_session";
/// How long a login lasts.
const SESSION_SECONDS: u64 = 12 * 3600;
/// How long a login link works (once).
const CODE_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How long a client may take over its TLS handshake, and over each
/// request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Backups whose file lists are kept in memory.
const CONTENTS_KEPT: usize = 4;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'none'; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

struct Shared {
    options: ServeOptions,
    token: blake3::Hash,
    /// One-time login codes not yet used, and until when they work.
    codes: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<blake3::Hash, Instant>>,
    allowed_hosts: Vec<String>,
    repos: Vec<Slot>,
    secure: bool,
}

/// One repository the server shows, as last read.
struct Slot {
    root: PathBuf,
    model: Mutex<Option<Arc<Model>>>,
    /// Held by whoever reads the repository again.
    refreshing: tokio::sync::Mutex<()>,
    contents: Mutex<VecDeque<(String, ReadContents)>>,
}

type AppState = Arc<Shared>;

/// A backup's file list as read, or why it could not be.
type ReadContents = Arc<Result<Contents, String>>;

/// Checks the options, reads the repository once, and serves until
/// `cancel` is set; `announce` gets where to log in, once listening.
pub fn run(options: ServeOptions, cancel: Cancel, announce: &dyn Fn(&str)) -> Result<()> {
    let ip = options.listen.ip();
    if !ip.is_loopback() && options.tls.is_none() && !options.insecure_http {
        return Err(crate::usage!(
            "refusing to serve on {} without TLS: anyone on the network would see the token. Give --tls-cert and --tls-key, listen on 127.0.0.1 (and reach it through an SSH tunnel), or, on a network you trust, --insecure-http",
            options.listen
        ));
    }
    if ip.is_unspecified() && options.server_names.is_empty() {
        return Err(crate::usage!(
            "listening on {} answers on every address, and requests must name the server: give the name or address clients use with --server-name",
            options.listen
        ));
    }
    let tls = options
        .tls
        .as_ref()
        .map(|(cert, key)| tls_config(cert, key))
        .transpose()?;
    let token = load_or_create_token(&options.token_file)?;
    if options.repos.is_empty() {
        return Err(crate::usage!(
            "volsnap serve needs a repository: give --repo"
        ));
    }
    let host = Arc::new(host::HostRecord::load(&options.config, &options.state_dir));
    let mut repos = Vec::new();
    for root in &options.repos {
        let model = Model::load(root, host.clone())
            .with_context(|| format!("cannot read repository {}", root.display()))?;
        // Whatever key sources the environment names: never serve through
        // a key that reads the backups' contents.
        if model.encrypted && model.browsable {
            return Err(crate::usage!(
                "{} was opened with a key that reads its backups (a passphrase repository, or an identity): volsnap serve shows encrypted repositories through their write key only",
                root.display()
            ));
        }
        repos.push(Slot {
            root: root.clone(),
            model: Mutex::new(Some(Arc::new(model))),
            refreshing: tokio::sync::Mutex::new(()),
            contents: Mutex::new(VecDeque::new()),
        });
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let first_code = random_hex()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        // The port the system chose, when asked for port 0.
        let local = listener.local_addr()?;
        let shown_host = options
            .server_names
            .first()
            .map(|n| format!("{n}:{}", local.port()))
            .unwrap_or_else(|| local.to_string());
        let served: Vec<String> = options
            .repos
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        announce(&format!(
            "volsnap: serving {} at {scheme}://{shown_host}/\n  log in once with {scheme}://{shown_host}/login?code={first_code}\n  or send Authorization: Bearer <the token in {}>",
            served.join(", "),
            options.token_file.display()
        ));
        let shared = Arc::new(Shared {
            token: blake3::hash(token.as_bytes()),
            codes: Mutex::new(HashMap::from([(first_code, Instant::now() + CODE_LIFETIME)])),
            sessions: Mutex::new(HashMap::new()),
            allowed_hosts: allowed_hosts(&options, local),
            repos,
            secure: tls.is_some(),
            options,
        });
        let app = router(shared.clone());
        let stop = async move {
            while !cancel.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let tls = tls.map(|config| tokio_rustls::TlsAcceptor::from(Arc::new(config)));
        serve_connections(listener, app, tls, stop).await;
        Ok(())
    })
}

fn router(shared: AppState) -> Router {
    Router::new()
        .route("/", get(fleet))
        .route("/stack", get(stack))
        .route("/repository", get(repository))
        .route("/backup", get(backup))
        .route("/diff", get(diff))
        .route("/jobs", get(jobs))
        .route("/static/style.css", get(style))
        .route("/login", get(login))
        .route("/api/login-link", post(login_link))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Accepts connections until `stop`, each served on its own task, over
/// TLS when given an acceptor. A client gets [`HANDSHAKE_TIMEOUT`] for its
/// TLS handshake and again for each request's headers: a connection that
/// sends nothing does not hold a task for ever.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    continue;
                }
            },
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            match tls {
                None => {
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                }
                Some(acceptor) => {
                    let accepted =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    if let Ok(Ok(stream)) = accepted {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
    }
}

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| crate::usage!("cannot read the certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(crate::usage!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| crate::usage!("cannot read the private key {}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| crate::usage!("the certificate and key do not make a TLS server: {e}"))
}

/// The Host header values a request may carry.
fn allowed_hosts(options: &ServeOptions, local: SocketAddr) -> Vec<String> {
    let port = local.port();
    let mut hosts = vec![local.to_string()];
    if local.ip().is_loopback() {
        hosts.push(format!("localhost:{port}"));
    }
    for name in &options.server_names {
        hosts.push(format!("{name}:{port}"));
        let default = if options.tls.is_some() { 443 } else { 80 };
        if port == default {
            hosts.push(name.clone());
        }
    }
    hosts
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    crate::fsutil::random_bytes(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The token in `file`, made (0600) if there is none; refused if others
/// may read it.
fn load_or_create_token(file: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(file) {
        Ok(meta) => {
            if !meta.is_file() || meta.mode() & 0o077 != 0 {
                return Err(crate::usage!(
                    "the token file {} must be a regular file only its owner can read (chmod 600)",
                    file.display()
                ));
            }
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?;
            let token = token.trim().to_string();
            if token.len() < 32 {
                return Err(crate::usage!(
                    "the token in {} is shorter than 32 characters; delete the file and a new token is made",
                    file.display()
                ));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let token = random_hex()?;
            crate::fsutil::write_private(file, format!("{token}\n").as_bytes())?;
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the token file {}", file.display())),
    }
}

/// Every request: the Host header, the token, then the page, which gets
/// the security headers.
async fn guard(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let mut response = if !host.is_some_and(|h| shared.allowed_hosts.iter().any(|a| a == h)) {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "volsnap serve answers only to the address it listens on (see --server-name)\n",
        )
            .into_response()
    } else if request.uri().path() == "/login" || authorized(&shared, request.headers()) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "volsnap serve needs its token: open the login link it printed, or send Authorization: Bearer <the token file's content>\n",
        )
            .into_response()
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    // blake3::Hash compares in constant time.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|t| blake3::hash(t.trim().as_bytes()) == shared.token) {
        return true;
    }
    let Some(session) = cookie(headers, SESSION_COOKIE) else {
        return false;
    };
    let Ok(mut sessions) = shared.sessions.lock() else {
        return false;
    };
    let now = Instant::now();
    sessions.retain(|_, until| *until > now);
    sessions.contains_key(&blake3::hash(session.as_bytes()))
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// `/login?code=C[&next=/path]`: a one-time code becomes a session cookie.
async fn login(
    State(shared): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let now = Instant::now();
    let used = query.get("code").is_some_and(|code| {
        shared.codes.lock().is_ok_and(|mut codes| {
            codes.retain(|_, until| *until > now);
            codes.remove(code).is_some()
        })
    });
    if !used {
        return (
            StatusCode::UNAUTHORIZED,
            "this login link was used already or never was one: ask for a new one (POST /api/login-link with the token, or restart volsnap serve)\n",
        )
            .into_response();
    }
    let Ok(session) = random_hex() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot make a session\n").into_response();
    };
    if let Ok(mut sessions) = shared.sessions.lock() {
        sessions.insert(
            blake3::hash(session.as_bytes()),
            Instant::now() + Duration::from_secs(SESSION_SECONDS),
        );
    }
    // Only a path on this server, in plain characters: never an open
    // redirect (browsers drop tabs and newlines: `/\t/evil.example`).
    let next = query
        .get("next")
        .filter(|n| {
            n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/_.?=&%-+~".contains(&b))
        })
        .map_or("/", String::as_str);
    let secure = if shared.secure { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECONDS}{secure}"
    );
    let mut response = Redirect::to(next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A new one-time login link (for whoever holds the token).
async fn login_link(State(shared): State<AppState>) -> Response {
    match random_hex() {
        Ok(code) => {
            if let Ok(mut codes) = shared.codes.lock() {
                codes.insert(code.clone(), Instant::now() + CODE_LIFETIME);
            }
            format!("/login?code={code}\n").into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot make a code\n").into_response(),
    }
}

/// What was read of repository `n`, read again once older than the
/// refresh interval (by one request; the others see the last reading).
async fn model(shared: &AppState, n: usize) -> Result<Arc<Model>, Response> {
    let slot = &shared.repos[n];
    let current = slot.model.lock().ok().and_then(|m| m.clone());
    let stale = current.as_ref().is_none_or(|m| {
        (chrono::Utc::now() - m.loaded_at)
            .to_std()
            .unwrap_or_default()
            > shared.options.refresh
    });
    if !stale {
        return current.ok_or_else(|| unavailable("nothing read yet"));
    }
    let Ok(_guard) = slot.refreshing.try_lock() else {
        return current.ok_or_else(|| unavailable("the repository is being read"));
    };
    let root = slot.root.clone();
    let (config, state_dir) = (
        shared.options.config.clone(),
        shared.options.state_dir.clone(),
    );
    let read = tokio::task::spawn_blocking(move || {
        Model::load(&root, Arc::new(host::HostRecord::load(&config, &state_dir)))
    });
    match read.await {
        Ok(Ok(fresh)) => {
            let fresh = Arc::new(fresh);
            if let Ok(mut m) = slot.model.lock() {
                *m = Some(fresh.clone());
            }
            if let Ok(mut c) = slot.contents.lock() {
                c.clear();
            }
            Ok(fresh)
        }
        Ok(Err(e)) => {
            tracing::warn!("cannot read the repository again: {e:#}");
            current.ok_or_else(|| unavailable(&format!("cannot read the repository: {e:#}")))
        }
        Err(_) => current.ok_or_else(|| unavailable("reading the repository failed")),
    }
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}

type Params = Query<HashMap<String, String>>;

/// What every page starts with: the repository it is about (`repo=N`,
/// the first by default) as last read.
async fn page_model(shared: &AppState, query: &HashMap<String, String>) -> Result<Page, Response> {
    let n = match query.get("repo").map(|n| n.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n < shared.repos.len() => n,
        Some(_) => {
            let m = model(shared, 0).await?;
            return Err(missing(
                &view(shared, &m, 0),
                "no such repository on this server",
            ));
        }
    };
    Ok(Page {
        n,
        model: model(shared, n).await?,
    })
}

struct Page {
    n: usize,
    model: Arc<Model>,
}

impl Page {
    fn view<'p>(&'p self, shared: &'p Shared) -> pages::View<'p> {
        view(shared, &self.model, self.n)
    }
}

fn view<'m>(shared: &'m Shared, model: &'m Model, n: usize) -> pages::View<'m> {
    pages::View {
        model,
        repo: n,
        repos: &shared.options.repos,
        now: chrono::Utc::now(),
        overdue_after: chrono::Duration::from_std(shared.options.overdue_after)
            .unwrap_or(chrono::Duration::hours(26)),
    }
}

fn html(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

async fn fleet(State(shared): State<AppState>) -> Response {
    let mut models = Vec::new();
    for n in 0..shared.repos.len() {
        match model(&shared, n).await {
            Ok(m) => models.push(m),
            Err(r) => return r,
        }
    }
    let views: Vec<pages::View<'_>> = models
        .iter()
        .enumerate()
        .map(|(n, m)| view(&shared, m, n))
        .collect();
    html(pages::fleet(&views))
}

async fn repository(State(shared): State<AppState>, Query(query): Params) -> Response {
    let page = match page_model(&shared, &query).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // A dry run of prune reads every backup's trees: off the async
    // threads, once per reading of the repository.
    let (m, policy) = (page.model.clone(), shared.options.prune_policy.clone());
    let worked = tokio::task::spawn_blocking(move || {
        m.prune_preview(policy.as_ref());
    })
    .await;
    // Never worked out here, on the server's own threads.
    let failed = model::PrunePreview {
        rules: String::new(),
        result: Err("working out what a prune would free failed".to_string()),
    };
    let preview = match worked {
        Ok(()) => page.model.prune_preview_done().unwrap_or(&failed),
        Err(_) => &failed,
    };
    html(pages::repository(&page.view(&shared), preview))
}

async fn jobs(State(shared): State<AppState>) -> Response {
    match model(&shared, 0).await {
        Ok(m) => html(pages::jobs(&view(&shared, &m, 0))),
        Err(r) => r,
    }
}

async fn stack(State(shared): State<AppState>, Query(query): Params) -> Response {
    let page = match page_model(&shared, &query).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let v = page.view(&shared);
    let (Some(host), Some(selection)) = (query.get("host"), query.get("selection")) else {
        return missing(&v, "a stack needs ?host=…&selection=…");
    };
    if page.model.of_stack(host, selection).next().is_none() {
        return missing(&v, "no backups of that stack in this repository");
    }
    html(pages::stack(&v, host, selection))
}

fn missing(v: &pages::View<'_>, text: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        html(pages::message(v, "Not found", text)),
    )
        .into_response()
}

async fn not_found(State(shared): State<AppState>) -> Response {
    match model(&shared, 0).await {
        Ok(m) => missing(&view(&shared, &m, 0), "no such page"),
        Err(r) => r,
    }
}

/// A backup's file list: read once, then kept for the next views.
async fn contents_of(shared: &AppState, page: &Page, key: &str) -> ReadContents {
    let slot = &shared.repos[page.n];
    if let Some(kept) = slot
        .contents
        .lock()
        .ok()
        .and_then(|c| c.iter().find(|(k, _)| k == key).map(|(_, c)| c.clone()))
    {
        return kept;
    }
    let read = if !page.model.browsable {
        Err("The file lists of an encrypted repository need an identity, which the dashboard never loads: use volsnap ls with --identity.".to_string())
    } else {
        let (root, id) = (page.model.root.clone(), key.to_string());
        let scope = crate::repo::Scope {
            host: String::new(),
            selection: None,
        };
        match tokio::task::spawn_blocking(move || {
            contents::read(&root, &id, &scope, &Cancel::new())
        })
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("cannot read the backup's file list: {e:#}")),
            Err(_) => Err("reading the backup's file list failed".to_string()),
        }
    };
    let read = Arc::new(read);
    if let Ok(mut kept) = slot.contents.lock() {
        if kept.len() == CONTENTS_KEPT {
            kept.pop_front();
        }
        kept.push_back((key.to_string(), read.clone()));
    }
    read
}

async fn backup(State(shared): State<AppState>, Query(query): Params) -> Response {
    let page = match page_model(&shared, &query).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let v = page.view(&shared);
    let Some(b) = query.get("id").and_then(|id| page.model.find(id)) else {
        return missing(&v, "no such backup in this repository");
    };
    let contents = contents_of(&shared, &page, &b.key).await;
    let under = query.get("under").map_or("", String::as_str);
    let shown = contents.as_ref().as_ref().map_err(Clone::clone);
    html(pages::backup(&v, b, shown, under))
}

async fn diff(State(shared): State<AppState>, Query(query): Params) -> Response {
    let page = match page_model(&shared, &query).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let v = page.view(&shared);
    let found = |name: &str| query.get(name).and_then(|id| page.model.find(id));
    let (Some(from), Some(to)) = (found("from"), found("to")) else {
        return missing(
            &v,
            "a diff needs ?from=…&to=…, two backups of this repository",
        );
    };
    let (old, new) = (
        contents_of(&shared, &page, &from.key).await,
        contents_of(&shared, &page, &to.key).await,
    );
    // Off the async threads: a diff of two large backups takes a while.
    let changes = tokio::task::spawn_blocking(move || match (old.as_ref(), new.as_ref()) {
        (Ok(old), Ok(new)) => Ok(contents::diff(old, new)),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    })
    .await
    .unwrap_or_else(|_| Err("comparing the backups failed".to_string()));
    let shown = changes.as_deref().map_err(Clone::clone);
    html(pages::diff(&v, from, to, shown))
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::STYLE,
    )
        .into_response()
}
