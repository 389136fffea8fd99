//! `ignite version`.

use serde::Serialize;

use crate::cli::VersionArgs;
use crate::context::Ctx;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Version {
    major: String,
    minor: String,
    git_version: String,
    rust_version: String,
    compiler: String,
    platform: String,
    api_version: String,
}

pub fn run(_ctx: &Ctx, a: VersionArgs) -> anyhow::Result<()> {
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split('.');
    let info = Version {
        major: parts.next().unwrap_or("0").into(),
        minor: parts.next().unwrap_or("0").into(),
        git_version: format!("v{v}"),
        rust_version: option_env!("RUSTC_VERSION").unwrap_or("1.95.0").into(),
        compiler: "rustc".into(),
        platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        api_version: ignite_api::API_VERSION.into(),
    };
    match a.output.as_deref() {
        Some("short") => println!("v{v}"),
        Some("json") => println!("{}", serde_json::to_string_pretty(&info)?),
        Some("yaml") => print!("{}", serde_yaml::to_string(&info)?),
        _ => {
            println!("Ignite version: v{v}");
            println!("API version: {}", info.api_version);
            println!("Platform: {}", info.platform);
        }
    }
    Ok(())
}
