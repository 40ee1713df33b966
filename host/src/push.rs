//! `echo-host push URL FILE`: uploads a component to a running host's admin API and prints what
//! the host answered (the swap outcome, or why the candidate was rejected).

use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::PushArgs;
use crate::signing::{SIGNATURE_HEADER, sibling};

pub async fn push(args: &PushArgs) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read the token file `{}`", args.token_file.display()))?;
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("cannot read `{}`", args.file.display()))?;
    let signature_path = args.signature.clone().unwrap_or_else(|| sibling(&args.file, "sig"));
    let signature = match std::fs::read_to_string(&signature_path) {
        Ok(text) => Some(text.trim().to_string()),
        Err(_) if args.signature.is_none() => None,
        Err(e) => bail!("cannot read the signature `{}`: {e}", signature_path.display()),
    };
    let endpoint = format!("{}/.well-known/echo-host/admin/component", args.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .context("cannot build the HTTP client")?;
    let mut request = client.put(&endpoint).bearer_auth(token.trim()).body(bytes);
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    let response = request.send().await.with_context(|| format!("cannot reach `{endpoint}`"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{}", body.trim_end());
    if !status.is_success() {
        bail!("the host answered {status}");
    }
    Ok(())
}
