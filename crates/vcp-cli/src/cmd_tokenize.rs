//! `vcp tokenize [--context 77] TEXT...`

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Context length (ids per text, zero-padded; longer text is truncated keeping EOT last).
    #[arg(long, default_value_t = 77)]
    context: usize,
    /// Texts to tokenize.
    #[arg(required = true)]
    text: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.context >= 2,
        "--context must be at least 2 (start and end tokens)"
    );
    let tok = vcp_clip::Tokenizer::vcp()?;
    let ids: Vec<Vec<u32>> = a
        .text
        .iter()
        .map(|t| tok.tokenize(t, a.context, true))
        .collect::<Result<_, _>>()?;
    outln!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
