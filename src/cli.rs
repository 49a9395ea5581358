//! Command-line definitions (clap). Nothing else in the program sees clap.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use volsnap::plan::{Quiesce, RequestedStrategy};
use volsnap::repo::manifest::Compression;

/// Consistent backups of Docker volumes: stop/flush/archive (cold), archive
/// while running (online), or snapshot for about a second (snapshot).
#[derive(Parser, Debug)]
#[command(name = "volsnap", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The keys of encrypted repositories (docs/encryption.md).
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Age identity file (age-keygen's) that reads an encrypted
    /// repository's contents: restore, export, verify --deep, drill. Keep
    /// it off the hosts that only back up.
    #[arg(
        long,
        global = true,
        env = "VOLSNAP_IDENTITY_FILE",
        value_name = "FILE"
    )]
    pub identity: Option<PathBuf>,
    /// Write key file of an encrypted repository: backs up, lists, prunes
    /// and checks structure, reads nothing. Default: <state dir>/keys/<key
    /// id>.key, where init writes it.
    #[arg(
        long,
        global = true,
        env = "VOLSNAP_WRITE_KEY_FILE",
        value_name = "FILE"
    )]
    pub write_key: Option<PathBuf>,
    /// File whose first line is the passphrase of a passphrase repository
    /// (with init: create one, restic's model: the passphrase reads and writes).
    #[arg(
        long,
        global = true,
        env = "VOLSNAP_PASSPHRASE_FILE",
        value_name = "FILE"
    )]
    pub passphrase_file: Option<PathBuf>,
}

const EXAMPLES: &str = "\
Examples:
  volsnap plan   --project milvus
  volsnap backup --project milvus --repo /backups
  volsnap list   --repo /backups
  volsnap verify --repo /backups latest --deep
  volsnap restore --repo /backups latest --volume milvus_etcd=etcd_restored
  volsnap restore --repo /backups latest --target-dir /tmp/inspect
  volsnap ls     --repo /backups latest milvus_etcd/member
  volsnap diff   --repo /backups 20261126T020000Z-1a2b latest
  volsnap snapshot --project milvus --name before-2.4   # then upgrade
  volsnap rollback before-2.4                           # if the upgrade broke it
  volsnap snapshots drop before-2.4                     # once it did not
  volsnap prune --repo /backups --keep-daily 7 --keep-weekly 4 --dry-run
  volsnap drill --repo /backups --project milvus --check etcd='etcdctl endpoint health'

Unattended (jobs in /etc/volsnap/volsnap.toml, see docs/volsnap.example.toml):
  volsnap config check
  volsnap run nightly        # or: volsnap daemon, or: volsnap systemd nightly
  volsnap status

Exit status: 0 success, 1 failure, 2 bad usage.";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository: format 2 (chunked, deduplicated, incremental;
    /// the default; encrypted with --recipient or --passphrase-file) or
    /// format 1 (one tar archive per volume).
    Init(InitArgs),
    /// Show the steps a backup would run, the volumes and sizes, and why
    /// this strategy.
    Plan(PlanArgs),
    /// Back up every volume of the selection as one point in time.
    Backup(BackupArgs),
    /// List the backups in a repository.
    List(ListArgs),
    /// Check a backup's checksums and entry lists; --deep checks every file.
    Verify(VerifyArgs),
    /// Restore a backup into its volumes, new volumes, or a directory.
    Restore(RestoreArgs),
    /// Write a backup to stdout as one GNU tar stream (xattrs as PAX
    /// records), whatever the repository's format: volsnap export … | tar -x.
    Export(ExportArgs),
    /// Snapshot a stack's volumes and keep the snapshots (before an upgrade).
    Snapshot(SnapshotArgs),
    /// List or drop kept snapshots.
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Roll every volume of a stack back to a kept snapshot.
    Rollback(RollbackArgs),
    /// Repair what a killed run left behind: restart the services it
    /// stopped, drop its snapshots and mounts, remove partial output.
    /// Every other run does this first, too.
    Recover(RecoverArgs),
    /// Delete old backups by a keep-last/hourly/daily/weekly/monthly/yearly
    /// policy, per stack; protected backups and the newest backup that
    /// verifies always stay.
    Prune(PruneArgs),
    /// Protect a backup from prune (or lift it with --remove).
    Protect(ProtectArgs),
    /// Delete one backup, named by its id or (format 2) its commit object
    /// id: the way to remove a backup retention leaves alone, such as one
    /// that does not verify as its host's. Its data goes with the next
    /// prune's garbage collection.
    Forget(ForgetArgs),
    /// This host's signing key, and the keys of other hosts it trusts: a
    /// format-2 backup counts as host X's (retention, latest, restore,
    /// drills) only if signed by a key trusted for X (docs/fleets.md).
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Run one job of the configuration file now: host hooks, backup,
    /// verification, retention, run log, metrics, notifications.
    Run(RunArgs),
    /// Run every job on its schedule until stopped (SIGTERM/SIGINT); SIGHUP
    /// reloads the configuration (a broken one is refused and the old one kept).
    Daemon(DaemonArgs),
    /// Per job: last success and failure, newest verified backup, last drill.
    Status(StatusArgs),
    /// Check the configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a systemd service and timer that run a job on its schedule.
    Systemd(SystemdArgs),
    /// Prove a backup restores and starts: restore into scratch volumes,
    /// start a copy of the stack on an isolated network, wait until healthy,
    /// tear it all down, record the result.
    Drill(DrillArgs),
    /// Manage an encrypted repository's keys: who can read new backups,
    /// and the write key hosts back up with (docs/encryption.md).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Repair a damaged format-2 repository: `repair index` rebuilds the
    /// index from the packs' own headers (after an index was lost,
    /// truncated or tampered with; `verify --all` says when).
    Repair {
        #[command(subcommand)]
        command: RepairCommand,
    },
    /// What a repository is, as this host pinned it on first use (id,
    /// encryption, immutability, chunking), and accepting a change of it.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Copy backups into another repository, sending only the packs it
    /// lacks (an off-site copy of a local repository: docs/fleets.md).
    Copy(CopyArgs),
    /// List what a backup holds: every entry, or those under VOLUME[/PATH].
    Ls(LsArgs),
    /// What changed between two backups, entry by entry (+ added,
    /// - removed, M content, U metadata only, T type).
    Diff(DiffArgs),
    /// Serve a read-only dashboard of a repository in the browser: every
    /// stack's newest backup against its schedule, drills, plots, growth,
    /// file lists and diffs (docs/dashboard.md).
    Serve(ServeArgs),
    /// Mount a repository read-only (FUSE): every backup as files, under
    /// hosts/HOST/STACK/BACKUP/VOLUME, for diff -r, grep or a file manager.
    Mount(MountArgs),
    /// Print a completion script for a shell (bash, zsh, fish, elvish,
    /// powershell), made from the same definitions as --help.
    Completions(CompletionsArgs),
    /// Write man pages into a directory: volsnap.1 and one page per
    /// subcommand (volsnap-backup.1, …), made from the same definitions as
    /// --help.
    Man(ManArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  mkdir -p /mnt/backups && volsnap mount --repo /backups /mnt/backups
  diff -r /mnt/backups/hosts/db1/project=milvus/latest/milvus_etcd /var/lib/docker/volumes/milvus_etcd/_data
  volsnap mount --repo s3://bucket/volsnap --identity /root/volsnap.age /mnt/backups &
  umount /mnt/backups                                 # or Ctrl-C / SIGTERM to volsnap mount

The tree is hosts/HOST/STACK/BACKUP/VOLUME/…, with a 'latest' link in each stack to its
newest backup that verifies as its host's. Stacks are named by their selection
(project=milvus, container=a+container=b). Names from the repository that hold '/', '%',
control characters or a leading dot are shown with those bytes as %XX; a path inside a
backup that would leave its volume is not shown (and is reported). The mount is
read-only, nosuid and nodev, and only you may enter it unless --allow-other. File
contents are read on demand, every chunk checked; an encrypted repository needs an
identity (--identity or --passphrase-file). It stays in the foreground until unmounted.")]
pub struct MountArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH.
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// An empty directory to mount on.
    pub dir: PathBuf,
    /// Let other users see the mount (each entry's mode then applies;
    /// non-root users need user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Memory for file contents read through the mount, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub cache_mib: usize,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  volsnap completions bash > /etc/bash_completion.d/volsnap
  volsnap completions zsh > /usr/local/share/zsh/site-functions/_volsnap
  volsnap completions fish > ~/.config/fish/completions/volsnap.fish")]
pub struct CompletionsArgs {
    /// The shell to complete volsnap's commands and options in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  volsnap man --dir /usr/local/share/man/man1 && mandb -q
  volsnap man --dir /tmp/man && man -l /tmp/man/volsnap-backup.1")]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing; pages there
    /// are replaced).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  volsnap serve --repo /backups                       # http://127.0.0.1:8470/, loopback only
  volsnap serve --repo /backups --repo s3://offsite/volsnap --keep-daily 7 --keep-weekly 4
  ssh -L 8470:127.0.0.1:8470 backup-host              # then open the login link it printed
  volsnap serve --repo s3://bucket/volsnap --listen 0.0.0.0:8443 --server-name backups.example.org \\
      --tls-cert /etc/volsnap/dash.crt --tls-key /etc/volsnap/dash.key

Every request needs the token (made on first start, 0600, in the state directory): the
login link printed at start sets a session cookie once; scripts send
'Authorization: Bearer TOKEN', and POST /api/login-link mints a new link. Requests must
name the server in their Host header. Off loopback, TLS is required unless
--insecure-http. The repositories are only read, and no identity is loaded (--identity is
refused): an encrypted repository is listed with its write key, and shows its backups,
not their file lists.

Each repository page shows what a prune would free: a dry run of the --keep-* rules
given here over every stack, or else of this host's jobs' retention over their own
stacks. The jobs page shows this host's jobs (--config) and their run log.")]
pub struct ServeArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH; repeat to show several.
    #[arg(
        long = "repo",
        env = "VOLSNAP_REPO",
        value_name = "REPO",
        required = true
    )]
    pub repos: Vec<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8470")]
    pub listen: std::net::SocketAddr,
    /// A name clients reach the server by (the Host header they send),
    /// besides its address; repeatable.
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// The token file (default: serve-token in the state directory; made
    /// on first start).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP off loopback (the token then crosses the network
    /// in clear: only on a network you trust).
    #[arg(long)]
    pub insecure_http: bool,
    /// A stack whose newest backup is older than this is flagged overdue:
    /// a number with s, m, h or d (a bare number is hours).
    #[arg(long, value_name = "AGE", default_value = "26h", value_parser = parse_age)]
    pub overdue_after: std::time::Duration,
    /// Read the repository again after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub refresh: u64,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  volsnap ls --repo /backups latest                       # every volume, every entry
  volsnap ls --repo /backups latest milvus_etcd/member    # one directory, recursively
  volsnap ls --repo /backups 20261127T061000Z-1a2b --json

Only metadata is read (the manifest, or format 2's tree blobs), never the
archived content. Names are shown with control characters escaped.")]
pub struct LsArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH.
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// Backup id, or "latest" (the newest from this host, of the stack
    /// when one is named).
    pub id: String,
    /// Only this volume, or this path inside it and what lies beneath
    /// (VOLUME or VOLUME/PATH).
    #[arg(value_name = "VOLUME[/PATH]")]
    pub path: Option<String>,
    #[command(flatten)]
    pub only: StackFilterArgs,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print the entries as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  volsnap diff --repo /backups 20261126T020000Z-1a2b latest
  volsnap diff --repo /backups OLD NEW --json

Marks: + only in the second backup, - only in the first, M content (or a
link's target) changed, U only mode, owner or modification time changed,
T another kind of entry. Only metadata is read: content is compared by its
recorded SHA-256 (format 1) or chunk list (format 2).")]
pub struct DiffArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH.
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// The earlier backup (an id, or "latest").
    pub old: String,
    /// The later backup (an id, or "latest").
    pub new: String,
    /// Only this volume, or this path inside it (VOLUME or VOLUME/PATH).
    #[arg(long, value_name = "VOLUME[/PATH]")]
    pub path: Option<String>,
    #[command(flatten)]
    pub only: StackFilterArgs,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print the changes as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  volsnap init --repo s3://offsite/host1 --like /backups   # once: same keys, same chunking
  volsnap copy --from /backups --to s3://offsite/host1     # every backup the copy lacks
  volsnap copy --from /backups --to s3://offsite/host1 latest --project milvus

The destination must cut and seal blobs as the source does: two plain
repositories, or one made with init --like. Packs are copied as they are, so
encrypted backups are copied with the write key alone, no identity.")]
pub struct CopyArgs {
    /// The repository the backups are in.
    #[arg(long, value_name = "REPO")]
    pub from: PathBuf,
    /// The repository they go to (made with volsnap init --like FROM, or
    /// another plain format-2 repository).
    #[arg(long, value_name = "REPO")]
    pub to: PathBuf,
    /// Backups to copy: ids, or "latest" (the newest from this host, of
    /// the stack when one is named). Default: every backup the destination
    /// lacks (of the stack, when one is named).
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub only: StackFilterArgs,
    #[command(flatten)]
    pub host: HostArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH (docs/remote.md).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// Backup id, or "latest" (the newest from this host, of the stack
    /// when one is named).
    #[arg(default_value = "latest")]
    pub id: String,
    /// Only this volume, its entries at the top of the stream (default:
    /// every volume, each under a directory of its own).
    pub volume: Option<String>,
    #[command(flatten)]
    pub only: StackFilterArgs,
    #[command(flatten)]
    pub host: HostArgs,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where the repository goes: a directory that is empty or does not
    /// exist yet, or an empty s3://BUCKET/PREFIX or sftp://USER@HOST/PATH.
    /// S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or
    /// ~/.aws, the endpoint from AWS_ENDPOINT_URL or ?endpoint=URL.
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// chunked: format 2, every backup after the first costs what changed
    /// (what a first backup into an empty directory creates too); tar:
    /// format 1, archives GNU tar reads directly.
    #[arg(long, value_enum, default_value = "chunked")]
    pub format: FormatArg,
    /// Encrypt to this age recipient (age1…, from age-keygen -y); repeat
    /// for several. Hosts that back up get a write key file and can read
    /// nothing; an identity of a recipient reads (--identity).
    #[arg(long, value_name = "AGE_RECIPIENT")]
    pub recipient: Vec<String>,
    /// Encrypt to the recipients in FILE, one per line (# comments), as
    /// age -R takes them.
    #[arg(long, value_name = "FILE")]
    pub recipients_file: Vec<PathBuf>,
    /// Make the new repository like this one: the same chunking and the
    /// same keys (its write key file and identities serve both), so that
    /// volsnap copy moves backups between them as they are, without an
    /// identity. For the off-site side of a local repository.
    #[arg(long, value_name = "REPO", conflicts_with_all = ["recipient", "recipients_file"])]
    pub like: Option<PathBuf>,
    /// Make an immutable repository on an S3 bucket with Object Lock:
    /// every object a backup needs is retained DAYS days (compliance mode:
    /// no credential can delete it sooner), and each backup renews what it
    /// references. Leaked host credentials then cannot destroy backups.
    #[arg(long, value_name = "DAYS")]
    pub immutable: Option<u32>,
    #[command(flatten)]
    pub state: StateArgs,
}

/// clap's view of the repository formats.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum FormatArg {
    Chunked,
    Tar,
}

/// The configuration file (TOML) that names the jobs.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The configuration file (see docs/volsnap.example.toml).
    #[arg(long = "config", env = "VOLSNAP_CONFIG", value_name = "FILE", default_value = volsnap::jobs::config::DEFAULT_CONFIG)]
    pub path: PathBuf,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The job's name ([jobs.NAME] in the configuration).
    pub job: String,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Run the job's recovery drill instead of its backup.
    #[arg(long)]
    pub drill: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Schedules are cron expressions in local time (5 fields, or 6 with seconds first). A run
missed while the daemon was down runs once when it starts again; one job never runs twice
at once. On SIGTERM the daemon stops: a backup under way is aborted through its cleanup
(services restarted, partial output removed).")]
pub struct DaemonArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the file; every problem is reported with its line.
    Check(ConfigArgs),
}

#[derive(Args, Debug)]
pub struct SystemdArgs {
    /// The job's name ([jobs.NAME] in the configuration).
    pub job: String,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Start each run up to this long after its scheduled time, at random
    /// (systemd's RandomizedDelaySec, e.g. 15min): hosts that share a
    /// repository then do not all start at once.
    #[arg(long, value_name = "SPAN", default_value = "0")]
    pub spread: String,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  volsnap drill --repo /backups --project milvus --check etcd='etcdctl endpoint health'
  volsnap run nightly --drill     # the drill settings of a configured job")]
pub struct DrillArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH (docs/remote.md).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// Backup id, or "latest" (of the selection).
    #[arg(default_value = "latest")]
    pub id: String,
    /// The stack whose backup is drilled (its containers are copied).
    #[command(flatten)]
    pub selection: SelectionArgs,
    #[command(flatten)]
    pub host: HostArgs,
    /// SERVICE=CMD: CMD runs inside the drill copy of SERVICE; exit 0 means
    /// healthy. Repeat for several.
    #[arg(long, value_name = "SERVICE=CMD")]
    pub check: Vec<String>,
    /// CMD runs on this host once the copies answer, with
    /// VOLSNAP_DRILL_<SERVICE> holding the address of SERVICE's copy on the
    /// drill network (e.g. a client program: `my-check --host
    /// $VOLSNAP_DRILL_STANDALONE`); exit 0 means healthy. Repeat for several.
    #[arg(long, value_name = "CMD")]
    pub check_host: Vec<String>,
    /// When a service now runs another image than its backup was taken
    /// with, run its copy on the recorded image (by id, never pulled; only
    /// if this host has it under the running image's repository, an older
    /// tag of the same software). Without it the copies run the current
    /// images and the report names the recorded ones.
    #[arg(long)]
    pub recorded_images: bool,
    /// Seconds to wait for every container and check to be healthy.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Each rule keeps the newest backup of each of its N newest periods (hours, days, ISO weeks,
months, years) that have one, counted in local time; a backup kept by any rule stays.

Examples:
  volsnap prune --repo /backups --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run
  volsnap prune --repo /backups --project milvus --keep-last 3")]
pub struct PruneArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH (docs/remote.md).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub only: StackFilterArgs,
    /// Only this host's backups (default: every host, each on its own).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Show what would go and why each kept backup stays; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Retention rules (0 = off).
#[derive(Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest backup of each of the N newest hours.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest backup of each of the N newest days.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest backup of each of the N newest ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the N newest months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest backup of each of the N newest years.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
}

#[derive(Args, Debug)]
pub struct ProtectArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH (docs/remote.md).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// Backup id, or "latest".
    pub id: String,
    /// Lift the protection instead.
    #[arg(long)]
    pub remove: bool,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH.
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// The backup: its id, or its commit object id (volsnap list --json
    /// shows it as "object").
    pub id: String,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// This host's key fingerprint, and the keys it trusts for other hosts.
    Show(HostStateArgs),
    /// Trust a key for host NAME: its backups then count as NAME's here.
    /// Keys are added, never replaced: a reinstalled host's new key joins
    /// its old one, and the old backups keep verifying.
    Trust {
        /// The host name the backups state.
        name: String,
        /// The key's fingerprint, as `volsnap host show` prints it on that
        /// host (ed25519:…).
        fingerprint: String,
        #[command(flatten)]
        state: HostStateArgs,
    },
    /// Sign, as attestations, this host's backups from before backups were
    /// signed, so its retention and `latest` count them again. Only backups
    /// this host's own history records are adopted (or those named).
    Adopt {
        /// The format-2 repository: a directory, s3://BUCKET/PREFIX or
        /// sftp://USER@HOST/PATH.
        #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
        repo: PathBuf,
        /// Adopt exactly these backups (ids, or commit object ids), which
        /// the operator vouches for, instead of those in this host's history.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        /// Say what would be adopted, write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        state: HostStateArgs,
    },
    /// Trust a key no more, for every host name (after a host was
    /// compromised): what it signed is listed as unverified.
    Revoke {
        /// The key's fingerprint (ed25519:…).
        fingerprint: String,
        #[command(flatten)]
        state: HostStateArgs,
    },
}

#[derive(Args, Debug)]
pub struct HostStateArgs {
    #[command(flatten)]
    pub state: StateArgs,
}

/// Where volsnap keeps its state: the host lock, run journals, kept snapshots.
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// Where volsnap keeps the host lock, run journals, kept snapshots and
    /// the run log.
    #[arg(long, env = "VOLSNAP_STATE_DIR", value_name = "DIR", default_value = volsnap::snapshots::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Name to roll back to later (default: volsnap-<time>).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// How services are held still while the snapshots are taken.
    #[arg(long, value_enum, default_value_t = Quiesce::Stop)]
    pub quiesce: Quiesce,
    /// Seconds each service gets to stop gracefully (SIGTERM) before it is
    /// killed, with --quiesce stop. Default: the container's own stop
    /// timeout (compose's stop_grace_period), else 30.
    #[arg(long, value_name = "SECS")]
    pub stop_timeout: Option<u32>,
    /// Seconds to wait for each service to run (and be healthy, if it has
    /// a healthcheck) after it is started again.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub ready_timeout: u32,
    /// Copy-on-write area of classic LVM snapshots, e.g. 512M or 4G.
    #[arg(long, value_name = "SIZE", value_parser = volsnap::fsutil::parse_size)]
    pub snapshot_size: Option<u64>,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotsCommand {
    /// List kept snapshots.
    List {
        #[command(flatten)]
        state: StateArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop a kept snapshot (frees its space).
    Drop {
        /// The snapshot's name (volsnap snapshots list shows them).
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Show the encryption, this host's write key file and its recipients,
    /// and the key objects in the repository.
    List(KeyRepoArgs),
    /// Make backups written from now on readable by another age identity
    /// (earlier ones stay readable only by the identities they were
    /// written for).
    AddRecipient {
        #[command(flatten)]
        repo: KeyRepoArgs,
        /// age1… recipients to add.
        #[arg(required = true, value_name = "AGE_RECIPIENT")]
        recipients: Vec<String>,
    },
    /// Stop making new backups readable by a recipient (what it could read
    /// stays readable to it).
    RemoveRecipient {
        #[command(flatten)]
        repo: KeyRepoArgs,
        /// The recipients (age1…) no longer to encrypt new backups to.
        #[arg(required = true, value_name = "AGE_RECIPIENT")]
        recipients: Vec<String>,
    },
    /// New write key for everything sealed from now on (after a host's key
    /// file leaked): a copy of the old file no longer reads new indexes
    /// and backup records. Nothing already written is rewritten.
    Rotate(KeyRepoArgs),
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the packs: every present pack is read and
    /// checked against its name, each blob it lists is kept if its stored
    /// bytes check out, and new index objects replace every old one (which
    /// are deleted last: a kill at any point leaves a readable repository,
    /// and running it again finishes). Needs only the write key in an
    /// encrypted repository. Keeps other prunes out while it runs; backups
    /// go on.
    Index(RepairArgs),
}

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// The format-2 repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH.
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

/// This host pins what a format-2 repository is (its id, encryption and
/// write key, immutability, chunker) when it creates or first opens it,
/// and refuses to use it once its config says otherwise: a config
/// rewritten in storage must not switch encryption or Object Lock off.
#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Show what the repository's config says now, and how it differs from
    /// what this host pinned.
    Show(RepoArgs),
    /// Accept what the repository's config says now as what it is (after
    /// a change you made on purpose, or a repository replaced by design).
    Trust(RepoArgs),
}

#[derive(Args, Debug)]
pub struct RepoArgs {
    /// The format-2 repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH.
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug)]
pub struct KeyRepoArgs {
    /// The encrypted repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH. The command changes this host's write key
    /// file (--write-key, or the one init wrote under --state-dir).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The snapshot to roll back to.
    pub name: String,
    /// Seconds each service gets to stop gracefully (SIGTERM) before it is
    /// killed; the stack is stopped for the rollback. Default: the
    /// container's own stop timeout (compose's stop_grace_period), else 30.
    #[arg(long, value_name = "SECS")]
    pub stop_timeout: Option<u32>,
    /// Seconds to wait for each service to run (and be healthy, if it has
    /// a healthcheck) after the rollback.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub ready_timeout: u32,
    #[command(flatten)]
    pub state: StateArgs,
}

/// Which containers form the stack (exactly one kind).
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct SelectionArgs {
    /// Containers of a docker compose project (label com.docker.compose.project).
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
    /// A container by name or id; repeat for several.
    #[arg(long, value_name = "NAME")]
    pub container: Vec<String>,
    /// Containers carrying the label KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Option<String>,
}

/// Which host's backups: a repository may be shared by several hosts.
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// The host whose backups are meant (default: this machine's hostname).
    /// `latest` is the newest backup from this host; a backup records it.
    #[arg(long, env = "VOLSNAP_HOST", value_name = "NAME")]
    pub host: Option<String>,
}

impl HostArgs {
    pub fn name(&self) -> String {
        self.host
            .clone()
            .unwrap_or_else(volsnap::execute::this_host)
    }
}

/// Optionally, one stack: only its backups (default: every stack in the
/// repository, each on its own).
#[derive(Args, Debug, Clone)]
#[group(required = false, multiple = false)]
pub struct StackFilterArgs {
    /// Only backups of this compose project.
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
    /// Only backups of these containers (as given to backup).
    #[arg(long, value_name = "NAME")]
    pub container: Vec<String>,
    /// Only backups of the containers labelled KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Option<String>,
}

impl StackFilterArgs {
    pub fn to_selection_args(&self) -> Option<SelectionArgs> {
        (self.project.is_some() || self.label.is_some() || !self.container.is_empty()).then(|| {
            SelectionArgs {
                project: self.project.clone(),
                container: self.container.clone(),
                label: self.label.clone(),
            }
        })
    }
}

/// How to choose and run the strategy.
#[derive(Args, Debug, Clone)]
pub struct StrategyArgs {
    /// auto picks snapshot when every volume is on LVM/ZFS/btrfs, else cold
    /// (or online when --max-downtime rules cold out).
    #[arg(long, value_enum, default_value_t = RequestedStrategy::Auto)]
    pub strategy: RequestedStrategy,
    /// How services are held still for a snapshot.
    #[arg(long, value_enum, default_value_t = Quiesce::Stop)]
    pub quiesce: Quiesce,
    /// Downtime budget in seconds; auto falls back to online when cold
    /// would exceed it.
    #[arg(long, value_name = "SECS")]
    pub max_downtime: Option<u64>,
    /// Refuse rather than fall back to a best-effort (online) backup.
    #[arg(long)]
    pub require_consistent: bool,
    /// Seconds each container gets to stop gracefully before it is killed.
    /// Default: the container's own stop timeout (compose's
    /// stop_grace_period, docker run --stop-timeout), else 30.
    #[arg(long, value_name = "SECS")]
    pub stop_timeout: Option<u32>,
    /// Seconds to wait for a restarted container to run (and be healthy).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub ready_timeout: u32,
    /// Copy-on-write area of classic LVM snapshots, e.g. 512M or 4G
    /// (default: a fifth of the volume, at least 256M).
    #[arg(long, value_name = "SIZE", value_parser = volsnap::fsutil::parse_size)]
    pub snapshot_size: Option<u64>,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// The repository the backup would go to: its format decides the
    /// repository steps shown (default: format 2, what an empty
    /// repository becomes).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: Option<PathBuf>,
    #[command(flatten)]
    pub strategy: StrategyArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Backup repository (a directory). An empty one becomes a format-2
    /// (deduplicating) repository; `volsnap init --format tar` makes one
    /// of tar archives instead. Also s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH (format 2 only).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub strategy: StrategyArgs,
    /// Compression of format-1 archives (format-2 packs are always zstd).
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: CompressionArg,
    /// Compression level: zstd 1-19 (default 1, the fast strategy; 3 is
    /// zstd's own default, about 1.5x slower here for a 0.1% smaller
    /// archive), gzip 1-9 (default 6).
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,
    /// Compression worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// Read at most RATE bytes per second, e.g. 50M (gentle on a busy host).
    #[arg(long, value_name = "RATE", value_parser = volsnap::fsutil::parse_size)]
    pub bwlimit: Option<u64>,
    /// Upload at most RATE bytes per second to an s3:// or sftp://
    /// repository, e.g. 20M (spares the uplink; --bwlimit is for reading).
    #[arg(long, value_name = "RATE", value_parser = volsnap::fsutil::parse_size)]
    pub upload_limit: Option<u64>,
    /// Run at the lowest CPU and I/O priority.
    #[arg(long)]
    pub io_nice: bool,
    /// Do not refuse when the repository seems too small for the backup.
    #[arg(long)]
    pub skip_space_check: bool,
    /// Format-2 repositories: read every file, even those whose size,
    /// times and inode match the previous backup of this host and stack.
    #[arg(long)]
    pub force_read: bool,
    /// Leave out what matches PATTERN in every volume: a name at any depth
    /// (`*.tmp`, `cache`) or, with a `/`, a path from the volume's root
    /// (`cache/**`). Repeat for several. The manifest records the patterns,
    /// so a restore knows what is missing on purpose. Volumes and
    /// containers can carry them too: label volsnap.exclude.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub host: HostArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// clap's view of [`Compression`].
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum CompressionArg {
    Zstd,
    Gzip,
    None,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::None => Compression::None,
        }
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH (docs/remote.md).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub only: StackFilterArgs,
    /// Only backups from this host (default: every host).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  volsnap verify --repo /backups                      # this host's newest backup: structure
  volsnap verify --repo /backups latest --deep        # and every file's SHA-256
  volsnap verify --repo /backups --all                # every backup, every index and pack
  volsnap verify --repo /backups --all --read-data-subset 5   # and 5% of the packs read whole

Exit status: 0 intact, 1 a problem found (each named, with the backups and files it
affects), 2 bad usage.")]
pub struct VerifyArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH (docs/remote.md).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// Backup id, or "latest" (the newest from this host, of the stack
    /// when one is named).
    #[arg(default_value = "latest")]
    pub id: String,
    #[command(flatten)]
    pub only: StackFilterArgs,
    #[command(flatten)]
    pub host: HostArgs,
    /// Also read every archive and check every file's SHA-256.
    #[arg(long)]
    pub deep: bool,
    /// Check the whole repository: every backup (format 1: each as above;
    /// format 2: every index, every pack present at its size, every
    /// backup's manifests and chunk lists).
    #[arg(long, conflicts_with = "id")]
    pub all: bool,
    /// With --all on format 2: also read this share of the packs in full,
    /// chosen at random each run (each blob decompressed and checked).
    /// 100 reads everything; a nightly 5 checks all data in about 20 days.
    #[arg(long, value_name = "PERCENT", requires = "all", value_parser = parse_percent)]
    pub read_data_subset: Option<f64>,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{text} is not between 0 and 100"))
    }
}

#[derive(Args, Debug)]
#[command(after_help = "\
Where a restore writes is decided by this host's Docker state and these flags, never by a
path read from the backup: volumes by name (a missing one is created plain), a bind path only
if a container binds it now. Every volume is staged and checked first, then all are swapped
in together; a failure or a kill leaves each volume wholly old or wholly new ('volsnap
recover' finishes or undoes it).

Examples:
  volsnap restore --repo /backups --volume milvus_etcd=etcd_check   # side by side
  volsnap restore --repo /backups --volume milvus_minio --force     # that volume only
  volsnap restore --repo /backups --target-dir /tmp/x --include 'member/snap/**'   # part of it
  volsnap restore --repo /backups --project milvus --force         # in place, this host's latest
  volsnap restore --repo /backups --host old-server --target-dir /tmp/inspect")]
pub struct RestoreArgs {
    /// Backup repository: a directory, s3://BUCKET/PREFIX or
    /// sftp://USER@HOST/PATH (docs/remote.md).
    #[arg(long, env = "VOLSNAP_REPO", value_name = "REPO")]
    pub repo: PathBuf,
    /// Backup id, or "latest" (the newest from this host, of the stack
    /// when one is named).
    #[arg(default_value = "latest")]
    pub id: String,
    #[command(flatten)]
    pub only: StackFilterArgs,
    #[command(flatten)]
    pub host: HostArgs,
    /// Restore volume OLD into volume NEW (created if missing), or with
    /// NAME alone volume NAME where it would go anyway; repeat for several.
    /// Only the volumes named are restored, and only their damage blocks
    /// the restore (salvage the intact volumes of a damaged backup).
    #[arg(long = "volume", value_name = "OLD=NEW|NAME")]
    pub volumes: Vec<String>,
    /// Restore into DIR/<volume> instead of Docker volumes (with --volume
    /// NAME, only those volumes).
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
    /// Write out only the stack's definition that the backup keeps (its
    /// compose files and the files its containers bind read-only, such as
    /// milvus.yaml), under their host paths, into DIR (new or empty).
    /// Nothing else is restored and the live files are never touched:
    /// compare, then copy what you need into place.
    #[arg(long, value_name = "DIR")]
    pub definition_to: Option<PathBuf>,
    /// Restore only what matches PATTERN (a name at any depth, or with a
    /// `/` a path from the volume's root; a matching directory brings all
    /// beneath it); repeat for several. Into --target-dir or a new volume
    /// (--volume OLD=NEW) only: a restore replaces a volume's content.
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Replace data that is there: needed whenever a target volume, bind
    /// path or directory is not empty (without it, restore says what it
    /// would replace and changes nothing). Containers using the targets
    /// are stopped and started again afterwards.
    #[arg(long)]
    pub force: bool,
    /// Allow device nodes, setuid/setgid files and security.*/trusted.*
    /// extended attributes (file capabilities).
    #[arg(long)]
    pub allow_special: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// Only say what would be undone.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop retrying the leftover undos of run RUN (the name recover
    /// prints) after fixing things by hand: its journal is moved to
    /// journal/abandoned/ for the record. Repeat for several runs.
    #[arg(long, value_name = "RUN")]
    pub give_up: Vec<String>,
    #[command(flatten)]
    pub state: StateArgs,
}

/// An age such as `90m`, `26h` or `7d` (a bare number is hours).
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not an age such as 90m, 26h or 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long an age"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn without_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_long().unwrap_or(id)));
            }
        }
        for sub in cmd.get_subcommands() {
            let name = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(name.clone());
            }
            without_help(sub, &name, missing);
        }
    }

    /// `--help` teaches every subcommand and every flag.
    #[test]
    fn every_subcommand_and_flag_has_help() {
        let mut missing = Vec::new();
        without_help(&Cli::command(), "volsnap", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }

    #[test]
    fn ages_take_a_unit_and_bare_numbers_are_hours() {
        let secs = |t| parse_age(t).map(|d| d.as_secs());
        assert_eq!(secs("90m"), Ok(5400));
        assert_eq!(secs("26"), Ok(26 * 3600));
        assert_eq!(secs("7d"), Ok(7 * 86_400));
        assert_eq!(secs("20s"), Ok(20));
        assert!(parse_age("5w").is_err());
        assert!(parse_age("h").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }
}
