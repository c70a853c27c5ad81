//! Boots the dev image and runs the commands given as arguments on its console (a debugging aid).
fn main() -> anyhow::Result<()> {
    let img = cairn_tests::dev_image()?;
    let mut cfg = cairn_qemu::VmConfig::uefi(img.raw());
    // POKE_DISK_GB: give the VM a bigger disk than the image (first boot grows ROOT).
    cfg.disk_size = std::env::var("POKE_DISK_GB").ok().and_then(|g| g.parse::<u64>().ok()).map(|g| g << 30);
    let mut vm = cairn_qemu::Vm::start(&cfg)?;
    vm.wait_for_line("cairn: ready", 0, std::time::Duration::from_secs(300))?;
    for cmd in std::env::args().skip(1) {
        if let Some(raw) = cmd.strip_prefix('!') {
            // Raw input, then wait for the host to come back.
            let mark = vm.console().mark();
            vm.send(format!("{raw}\n").as_bytes())?;
            let r = vm.wait_for_line("cairn: ready", mark, std::time::Duration::from_secs(300));
            println!("! {raw}: {r:?}");
            continue;
        }
        let out = vm.run(&cmd, std::time::Duration::from_secs(120))?;
        println!("$ {cmd}  [exit {}]\n{}", out.status, out.output);
    }
    println!("---- console ----\n{}", vm.console().text());
    Ok(())
}
