//! `volsnap serve`: the read-only dashboard (the library's `serve`).

use crate::cli::ServeArgs;
use anyhow::Result;
use std::time::Duration;

pub fn run(args: ServeArgs, keys: &crate::cli::KeyArgs) -> Result<i32> {
    let readers = [
        ("--identity or VOLSNAP_IDENTITY_FILE", &keys.identity),
        (
            "--passphrase-file or VOLSNAP_PASSPHRASE_FILE",
            &keys.passphrase_file,
        ),
    ];
    if let Some((how, Some(file))) = readers.iter().find(|(_, f)| f.is_some()) {
        return Err(volsnap::usage!(
            "volsnap serve never loads a key that reads backups ({} was given, by {how}): whoever reaches the dashboard would read through it. Serve with the write key only; read files with volsnap ls or restore",
            file.display()
        ));
    }
    let options = volsnap::serve::ServeOptions {
        token_file: args
            .token_file
            .unwrap_or_else(|| args.state.state_dir.join("serve-token")),
        repos: args.repos,
        config: args.config.path,
        state_dir: args.state.state_dir.clone(),
        prune_policy: Some(args.policy.to_policy()).filter(|p| !p.is_empty()),
        listen: args.listen,
        server_names: args.server_names,
        tls: args.tls_cert.zip(args.tls_key),
        insecure_http: args.insecure_http,
        overdue_after: args.overdue_after,
        refresh: Duration::from_secs(args.refresh.max(1)),
    };
    let cancel = volsnap::cancel::Cancel::from_signals()?;
    volsnap::serve::run(options, cancel, &|text| outln!("{text}"))?;
    Ok(0)
}
