//! `ignite logs`: the VM's serial console log.

use std::io::{Read, Seek, Write};

use ignite_api::Vm;

use crate::cli::LogsArgs;
use crate::context::Ctx;

use ignite_runtime::vmdir::VmDir;

pub fn run(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<()> {
    if !a.follow {
        if let Some(d) = ctx.daemon()? {
            std::io::stdout().lock().write_all(&d.logs(&a.vm)?)?;
            return Ok(());
        }
    }
    let store = ctx.store()?;
    let vm = store.resolve::<Vm>(&a.vm)?;
    let dir = VmDir::of(&store, &vm.uid());
    let (path, rotated) = (dir.console_log(), dir.console_log_rotated());
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("VM {:?} has no console log: it has never been started", vm.metadata.name)
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
    };
    let mut out = std::io::stdout().lock();
    if let Ok(mut old) = std::fs::File::open(&rotated) {
        std::io::copy(&mut old, &mut out)?;
    }
    std::io::copy(&mut f, &mut out)?;
    if !a.follow {
        return Ok(());
    }
    out.flush()?;
    loop {
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        if !buf.is_empty() {
            out.write_all(&buf)?;
            out.flush()?;
        } else {
            let cur = ignite_runtime::status::observe(store.get::<Vm>(&vm.uid())?);
            if !cur.status.running {
                return Ok(());
            }
            // Rotation: the file shrank, start from its beginning.
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < f.stream_position()? {
                f = std::fs::File::open(&path)?;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
