//! A container's network, made beside its task: a network namespace of its own, the CNI
//! plugins in it (loopback, and Cairn's bridge list or its `none` list, side by side), the
//! bridge's packet filter rules once a boot, and its published ports. The task is created in
//! the namespace meanwhile, and started once the network is there.

use super::options::Network;
use super::{bridge, cni, netns, ports};
use crate::cairn::Container;
use nix::fcntl::{Flock, FlockArg};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// Held while a runner changes the packet filter (the bridge's rules, published ports): iptables
/// over nf_tables refuses a change made beside another ("exit status 4"), so runners that
/// start together take turns. The CNI plugins change no packet filter: they run without it.
pub fn lock() -> Result<Flock<std::fs::File>, String> {
    let dir = Path::new(super::task::RUN_ROOT);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = std::fs::File::create(dir.join(".network.lock")).map_err(|e| format!("the network lock: {e}"))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| format!("taking the network lock: {e}"))
}

/// The network list of a network setting (none for the host's network).
pub fn list_of(network: Network) -> Option<&'static str> {
    match network {
        Network::Bridge => Some(cni::BRIDGE_LIST),
        Network::None => Some(cni::NONE_LIST),
        Network::Host => None,
    }
}

/// The CNI runs of a network setting: loopback, and the network list on `eth0`.
fn invocations(network: Network) -> Result<(cni::Invocation, Vec<cni::Invocation>), String> {
    let list = list_of(network).ok_or("the host's network has no CNI runs")?;
    Ok((cni::loopback(), cni::list_invocations(&cni::read_list(list)?, "eth0")?))
}

/// The network being made: waited for before the task starts, and in any case before it is
/// torn down (on drop), so a teardown never comes before the rules it withdraws.
pub struct Setup(Option<JoinHandle<Result<Option<Ipv4Addr>, String>>>);

/// Starts making container `c`'s network in the namespace at `netns`, for its run `id`.
pub fn start(c: &Container, id: &str, netns: PathBuf) -> Setup {
    let (c, id) = (c.clone(), id.to_string());
    Setup(Some(std::thread::spawn(move || make(&c, &id, &netns))))
}

fn make(c: &Container, id: &str, netns: &Path) -> Result<Option<Ipv4Addr>, String> {
    let (lo, list) = invocations(c.network)?;
    let rules = match c.network {
        Network::Bridge => Some(bridge::start(bridge::Base::of_this_host(), lock()?)?),
        Network::Host | Network::None => None,
    };
    let loopback = {
        let (id, netns) = (id.to_string(), netns.to_path_buf());
        std::thread::spawn(move || cni::run(&[lo], cni::Verb::Add, &id, &netns))
    };
    let added = cni::run(&list, cni::Verb::Add, id, netns);
    let lo_added = loopback.join().unwrap_or_else(|_| Err("the loopback plugin's run panicked".into()));
    // Whatever became of the plugins: a load left running could be made again by the next one.
    rules.map_or(Ok(()), bridge::Loading::finish)?;
    let result = added?;
    lo_added?;
    if c.network != Network::Bridge {
        return Ok(None);
    }
    let address = cni::ipv4_of(&result)
        .ok_or_else(|| format!("the bridge gave container {} no IPv4 address: {result}", c.name))?;
    if !c.ports.is_empty() {
        let _network = lock()?;
        for port in ports::publish(Path::new(ports::DIR), &c.name, address, &c.ports)? {
            eprintln!("container {}: {port} not published: the bridge has no IPv6 addresses", c.name);
        }
        // The bridge exists once a container is on it; the guard on 127/8 came with the rules.
        bridge::route_localnet()?;
    }
    Ok(Some(address))
}

impl Setup {
    /// The container's address on the bridge, once its network is made.
    pub fn wait(&mut self) -> Result<Option<Ipv4Addr>, String> {
        match self.0.take() {
            None => Ok(None),
            Some(thread) => thread.join().unwrap_or_else(|_| Err("making its network panicked".into())),
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("making a container's network: {e}");
        }
    }
}

/// Releases what the CNI plugins gave run `id` (its address, its veth) and unpins its namespace.
pub fn remove(id: &str, netns: &Path, network: Network) -> Result<(), String> {
    let released = invocations(network).and_then(|(lo, list)| {
        cni::run(&list, cni::Verb::Del, id, netns).and(cni::run(&[lo], cni::Verb::Del, id, netns))
    });
    let unpinned = netns::remove(netns);
    released.and(unpinned)
}
