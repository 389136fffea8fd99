//! `ignite doctor`: preflight checks with fixes.

use ignite_runtime::doctor::run_checks;
use ignite_runtime::preflight::Level;

use crate::context::Ctx;
use crate::output::table;

pub fn run(ctx: &Ctx, a: crate::cli::DoctorArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    if a.fix {
        let r = ignite_runtime::recover::recover_all(&store)?;
        for n in &r.networks {
            eprintln!("Released the network a killed start left for VM {n:?}");
        }
        if let Some(c) = &r.collected {
            eprintln!("Collector: {c}");
        }
    }
    let config = ctx.config()?;
    let checks = run_checks(&store, &config);
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            let s = match c.level {
                Level::Ok => "ok",
                Level::Warn => "warning",
                Level::Error => "error",
            };
            vec![c.name.to_string(), s.to_string(), c.detail.clone()]
        })
        .collect();
    table(&["CHECK", "STATUS", "DETAIL"], &rows);
    let errors = checks.iter().filter(|c| c.level == Level::Error).count();
    if errors > 0 {
        anyhow::bail!("{errors} check(s) failed: see DETAIL for the fix");
    }
    Ok(())
}
