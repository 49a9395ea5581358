//! `volsnap prune` and `volsnap protect`.

use crate::cli::{ForgetArgs, HostCommand, PolicyArgs, ProtectArgs, PruneArgs};
use anyhow::Result;
use volsnap::cancel::Cancel;
use volsnap::jobs::prune::{prune_at, PruneReport};
use volsnap::repo::retention::Policy;
use volsnap::text::escape;

impl PolicyArgs {
    pub fn to_policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
        }
    }
}

pub fn run(args: PruneArgs) -> Result<i32> {
    let selection = args.only.selection()?;
    let cancel = Cancel::from_signals()?;
    let _lock = if args.dry_run {
        None
    } else {
        Some(volsnap::jobs::begin_run(&args.state.state_dir)?)
    };
    let (report, collected) = prune_at(
        &args.repo,
        &args.policy.to_policy(),
        selection.as_deref(),
        args.host.as_deref(),
        args.dry_run,
        &cancel,
    )?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(c) = &collected {
            value["garbage"] = serde_json::to_value(c)?;
        }
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_report(&report);
        if let Some(c) = &collected {
            outln!(
                "garbage: {} pack(s) deleted ({}), {} pack(s) no backup needs marked for a later prune",
                c.packs_deleted,
                volsnap::fsutil::human_bytes(c.bytes_freed),
                c.packs_condemned
            );
            if c.packs_rewritten > 0 {
                outln!(
                    "  {} pack(s) mostly garbage rewritten: {} of used blobs copied into new packs (the old ones are among those marked)",
                    c.packs_rewritten,
                    volsnap::fsutil::human_bytes(c.bytes_rewritten)
                );
            }
            if c.packs_retained > 0 {
                outln!(
                    "  {} condemned pack(s) stay until Object Lock lets them go ({}); a later prune deletes them",
                    c.packs_retained,
                    c.retained_until
                        .map(|t| format!("the last on {}", t.format("%Y-%m-%d %H:%M UTC")))
                        .unwrap_or_default()
                );
            }
            if let Some(why) = &c.postponed {
                outln!("  deletion postponed: {why}");
            }
        }
    }
    Ok(0)
}

pub fn print_report(report: &PruneReport) {
    if report.groups.is_empty() {
        outln!("no backups to prune");
    }
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for group in &report.groups {
        let gone = group.decisions.iter().filter(|d| !d.keep).count();
        outln!(
            "{} from {}: keep {}, {verb} {gone}",
            escape(&group.selection),
            escape(&group.host),
            group.decisions.len() - gone
        );
        for d in &group.decisions {
            if d.keep {
                outln!("  keep   {}  ({})", escape(&d.id), d.reasons.join(", "));
            } else {
                outln!(
                    "  {:<6} {}",
                    if report.dry_run { "delete" } else { "gone" },
                    escape(&d.id)
                );
            }
        }
        for (id, why) in &group.unverified {
            outln!(
                "  untouched {}  (claims {}, {}: retention neither counts nor deletes it; volsnap forget does)",
                escape(id),
                escape(&group.host),
                why
            );
        }
        for (id, problem) in &group.damaged {
            eprintln!(
                "volsnap: warning: backup {} does not verify: {}",
                escape(id),
                escape(problem)
            );
        }
    }
    for r in &report.retained {
        outln!(
            "  kept   {}  (Object Lock retains it until {}; a later prune deletes it)",
            r.id,
            r.until.format("%Y-%m-%d %H:%M UTC")
        );
    }
}

pub fn protect(args: ProtectArgs) -> Result<i32> {
    let id = volsnap::repo::protect(&args.repo, &args.id, args.remove)?;
    outln!(
        "backup {id} is {}",
        if args.remove {
            "no longer protected"
        } else {
            "protected: prune never deletes it"
        }
    );
    Ok(0)
}

pub fn forget(args: ForgetArgs) -> Result<i32> {
    let _lock = volsnap::jobs::begin_run(&args.state.state_dir)?;
    let said = volsnap::jobs::prune::forget(&args.repo, &args.id)?;
    outln!("{said}");
    Ok(0)
}

pub fn host(command: HostCommand) -> Result<i32> {
    use volsnap::repo::attest;
    let said = match command {
        HostCommand::Show(args) => attest::show(&args.state.state_dir)?,
        HostCommand::Trust {
            name,
            fingerprint,
            state,
        } => attest::trust(&state.state.state_dir, &name, &fingerprint)
            .map_err(|e| volsnap::usage!("{e:#}"))?,
        HostCommand::Adopt {
            repo,
            ids,
            dry_run,
            state,
        } => {
            let _lock = volsnap::jobs::begin_run(&state.state.state_dir)?;
            let done = volsnap::jobs::adopt::adopt(&repo, &state.state.state_dir, &ids, dry_run)?;
            let mut said = format!(
                "{} {} backup(s) of this host: {}",
                if dry_run { "would adopt" } else { "adopted" },
                done.adopted.len(),
                if done.adopted.is_empty() {
                    "none".to_string()
                } else {
                    done.adopted.join(", ")
                }
            );
            if !done.ambiguous.is_empty() {
                said.push_str(&format!(
                    "\nnot adopted, another unsigned commit copies their time and selection (name the right one by its commit object id): {}",
                    done.ambiguous.join(", ")
                ));
            }
            if !done.unrecorded.is_empty() {
                said.push_str(&format!(
                    "\nnot adopted, this host's history does not record them (still unverified; name them to vouch for them): {}",
                    done.unrecorded.join(", ")
                ));
            }
            said
        }
        HostCommand::Revoke { fingerprint, state } => {
            attest::revoke(&state.state.state_dir, &fingerprint)
                .map_err(|e| volsnap::usage!("{e:#}"))?
        }
    };
    outln!("{said}");
    Ok(0)
}
