//! `volsnap init`: create a repository, encrypted when recipients or a
//! passphrase are given.

use crate::cli::{FormatArg, InitArgs, KeyArgs};
use anyhow::Result;
use volsnap::repo::keys::NewKeys;
use volsnap::repo::v2::crypto::Recipients;
use volsnap::repo::Format;

pub fn run(args: InitArgs, keys: &KeyArgs) -> Result<i32> {
    let format = match args.format {
        FormatArg::Chunked => Format::Chunked,
        FormatArg::Tar => Format::Tar,
    };
    let encryption = new_keys(&args, keys)?;
    let described = volsnap::repo::init(&args.repo, format, encryption, args.immutable)?;
    outln!("{described}");
    Ok(0)
}

fn new_keys(args: &InitArgs, keys: &KeyArgs) -> Result<Option<NewKeys>> {
    let mut lines: Vec<String> = args.recipient.clone();
    for file in &args.recipients_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            volsnap::usage!("cannot read the recipients file {}: {e}", file.display())
        })?;
        lines.extend(text.lines().map(str::to_string));
    }
    let given = !args.recipient.is_empty() || !args.recipients_file.is_empty();
    if let Some(source) = &args.like {
        if keys.passphrase_file.is_some() {
            return Err(volsnap::usage!(
                "--like takes the keys of {} as they are; leave out --passphrase-file",
                source.display()
            ));
        }
        return Ok(Some(NewKeys::Like(source.clone())));
    }
    match (&keys.passphrase_file, given) {
        (Some(_), true) => Err(volsnap::usage!(
            "--passphrase-file and --recipient/--recipients-file do not mix: a passphrase repository has the passphrase as its one key; choose one"
        )),
        (Some(file), false) => Ok(Some(NewKeys::Passphrase { file: file.clone() })),
        (None, true) => {
            let recipients = Recipients::parse(lines.iter().map(String::as_str), "--recipient")
                .map_err(|e| volsnap::usage!("{e:#}"))?;
            Ok(Some(NewKeys::Recipients {
                recipients,
                key_file: keys.write_key.clone(),
            }))
        }
        (None, false) => Ok(None),
    }
}
