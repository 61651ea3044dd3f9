pub mod align;
pub mod bench;
pub mod data;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod recipes;

use anymal_llm::LoadOptions;
use anymal_quant::QuantType;

/// Load options from the shared `--requant` flag.
pub fn load_options(requant: Option<&str>) -> anyhow::Result<LoadOptions> {
    let quant = requant.map(QuantType::parse).transpose()?;
    Ok(LoadOptions {
        quant,
        ..Default::default()
    })
}
