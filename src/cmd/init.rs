//! `volsnap init`: create a repository.

use crate::cli::{FormatArg, InitArgs};
use anyhow::Result;
use volsnap::repo::Format;

pub fn run(args: InitArgs) -> Result<i32> {
    let format = match args.format {
        FormatArg::Chunked => Format::Chunked,
        FormatArg::Tar => Format::Tar,
    };
    let described = volsnap::repo::init(&args.repo, format)?;
    outln!("{described}");
    Ok(0)
}
