//! `ignite cp SRC DST`: one side is `VM:PATH`.

use super::{running_vm, NotAvailable, UsageError, NO_BACKEND};
use crate::cli::CpArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: CpArgs) -> anyhow::Result<()> {
    let vm_side = |s: &str| {
        s.split_once(':')
            .filter(|(v, _)| !v.is_empty() && !v.contains('/'))
            .map(|(v, p)| (v.to_string(), p.to_string()))
    };
    let (vm, path) = match (vm_side(&a.source), vm_side(&a.dest)) {
        (Some(s), None) | (None, Some(s)) => s,
        (Some(_), Some(_)) => {
            return Err(
                UsageError("copying between two VMs is not supported: one side must be a host path".into()).into()
            )
        }
        (None, None) => return Err(UsageError("one of SOURCE and DEST must be VM:PATH".into()).into()),
    };
    if path.split('/').any(|c| c == "..") {
        return Err(UsageError(format!("invalid VM path {path:?}: '..' is not allowed")).into());
    }
    let vm = running_vm(&ctx.store()?, &vm)?;
    Err(NotAvailable { what: format!("cannot copy files with VM {:?}", vm.metadata.name), needs: NO_BACKEND }.into())
}
