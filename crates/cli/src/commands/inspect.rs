//! `ignite inspect vm|image|kernel|snapshot OBJECT`.

use ignite_api::{Image, Kernel, Snapshot, Vm};
use serde::Serialize;

use crate::cli::{Kind, ObjOutput};
use crate::context::Ctx;
use crate::output;
use crate::template::Template;

pub fn run(ctx: &Ctx, kind: Kind, query: &str, out: ObjOutput, template: Option<&str>) -> anyhow::Result<()> {
    let store = ctx.store()?;
    match kind {
        Kind::Vm => match ctx.daemon()? {
            Some(d) => show(&d.get(query)?, out, template),
            None => show(&ignite_runtime::status::observe(store.resolve::<Vm>(query)?), out, template),
        },
        Kind::Image => show(&super::objects::resolve::<Image>(&store, query)?, out, template),
        Kind::Kernel => show(&super::objects::resolve::<Kernel>(&store, query)?, out, template),
        Kind::Snapshot => show(&store.resolve::<Snapshot>(query)?, out, template),
    }
}

fn show<T: Serialize>(obj: &T, out: ObjOutput, template: Option<&str>) -> anyhow::Result<()> {
    if let Some(t) = template {
        let t = Template::parse(t).map_err(|e| super::UsageError(e.to_string()))?;
        let text = t.render(&serde_json::to_value(obj)?).map_err(|e| super::UsageError(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    output::object(obj, out)
}
