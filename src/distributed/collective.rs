//! Collective communication between the processes of a data-parallel run:
//! all-reduce (sum), broadcast from one rank, barrier, and a differentiable
//! all-reduce for SyncBN.
//!
//! The engines are libtorch's own c10d process groups, the ones PyTorch's
//! DDP uses: Gloo for CPU tensors and NCCL for CUDA tensors
//! (`csrc/collective.cpp`; tch binds neither). Processes meet the way
//! `torchrun` and Slurm users already start them: `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (with Slurm's and Open MPI's
//! own rank variables as fallbacks), through a TCP key-value store that rank
//! 0 hosts, or torchrun's agent when it says it hosts one.
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::{Error, Result};

extern "C" {
    fn pixpro_nccl_compiled() -> c_int;
    fn pixpro_group_new(
        backend: *const c_char,
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        is_server: c_int,
        prefix: *const c_char,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn pixpro_group_free(group: *mut c_void);
    fn pixpro_free_error(err: *mut c_char);
    fn pixpro_all_reduce_sum(
        group: *mut c_void,
        tensors: *mut *mut C_tensor,
        n: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn pixpro_broadcast(
        group: *mut c_void,
        tensors: *mut *mut C_tensor,
        n: c_int,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn pixpro_all_reduce_sum_autograd(
        group: *mut c_void,
        x: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
}

/// Which collective engine a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// NCCL on a CUDA device, Gloo on the CPU.
    Auto,
    Gloo,
    Nccl,
}

impl Engine {
    /// The engine for tensors on `device`.
    pub fn resolve(self, device: Device) -> Engine {
        match self {
            Engine::Auto if device.is_cuda() => Engine::Nccl,
            Engine::Auto => Engine::Gloo,
            e => e,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Gloo => "gloo",
            Engine::Nccl => "nccl",
        }
    }
}

/// Whether this binary was built with the NCCL engine.
pub fn nccl_compiled() -> bool {
    // SAFETY: a constant-returning C function.
    unsafe { pixpro_nccl_compiled() != 0 }
}

/// Where this process sits in a run of several, as its launcher says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    /// Rank among the processes of this machine: the CUDA device to use.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already hosts the store at the master address.
    pub agent_store: bool,
    /// How many times torchrun's agent has restarted the group
    /// (`TORCHELASTIC_RESTART_COUNT`, 0 without torchrun).
    pub restart: u64,
}

/// torchrun's variables first, then Slurm's, then Open MPI's.
const RANK_VARS: [(&str, &str, &str); 3] = [
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
];

impl Launch {
    /// The launch of this process, or `None` for a plain run of one process:
    /// no world size set, or Slurm's or Open MPI's world of 1. torchrun's
    /// `WORLD_SIZE=1` does give a group of one (on 127.0.0.1 unless
    /// `MASTER_ADDR` says otherwise), as PyTorch makes one: the way to run
    /// the engines on one device.
    pub fn from_env() -> Result<Option<Launch>> {
        Launch::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] over any variable lookup.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let Some((rank_var, world_var, local_var)) =
            RANK_VARS.into_iter().find(|(_, w, _)| var(w).is_some())
        else {
            return Ok(None);
        };
        let number = |key: &str| -> Result<Option<usize>> {
            var(key)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::distributed(format!("{key}={v:?} is not a whole number"))
                    })
                })
                .transpose()
        };
        let world_size = number(world_var)?.unwrap_or(1);
        let torchrun = rank_var == "RANK";
        if world_size == 0 || (world_size == 1 && !torchrun) {
            return Ok(None);
        }
        let rank = number(rank_var)?.ok_or_else(|| {
            Error::distributed(format!("{world_var}={world_size} is set but {rank_var} is not"))
        })?;
        if rank >= world_size {
            return Err(Error::distributed(format!(
                "{rank_var}={rank} is not below {world_var}={world_size}"
            )));
        }
        let local_rank = number(local_var)?.unwrap_or(0);
        let master_addr = var("MASTER_ADDR").filter(|a| !a.is_empty());
        let master_addr = master_addr.or_else(|| (world_size == 1).then(|| "127.0.0.1".into()));
        let master_addr = master_addr.ok_or_else(|| {
            Error::distributed(format!(
                "{world_var}={world_size} but MASTER_ADDR is not set: set it to the host name or \
                 address of the machine of rank 0 (torchrun sets it; see docs/distributed.md)"
            ))
        })?;
        let master_port = match var("MASTER_PORT") {
            None => 29500,
            Some(p) => p.trim().parse::<u16>().map_err(|_| {
                Error::distributed(format!("MASTER_PORT={p:?} is not a port number"))
            })?,
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        let restart = number("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u64;
        Ok(Some(Launch {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            agent_store,
            restart,
        }))
    }

    /// Where this group's keys live in the store. torchrun's agent keeps one
    /// store across restarts of the group, with every key the dead group
    /// wrote still in it: without a prefix per restart, a restarted rank can
    /// read the address a dead rank published and fail to connect to it
    /// (PyTorch 2.11's own `init_process_group` does so too, some restarts,
    /// not all). The count is each agent's own, the same on every rank of a
    /// machine; an agent that restarts its healthy ranks to rejoin another
    /// machine's failed ones, or a machine joining later, does not count,
    /// and that start can fail to meet (docs/distributed.md).
    fn store_prefix(&self) -> String {
        format!("pixpro/restart-{}", self.restart)
    }
}

/// A process group: every rank of the run, on one engine.
pub struct Group {
    raw: *mut c_void,
    rank: usize,
    world_size: usize,
    device: Device,
}

// SAFETY: c10d process groups are used from any thread in PyTorch (DDP's
// reducer calls them from autograd threads); ours are only ever called by
// one thread at a time, the one training.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group(rank {} of {}, {:?})", self.rank, self.world_size, self.device)
    }
}

/// Takes the message a C entry point left in `err`.
fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a NUL-terminated string from strdup, freed once here.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { pixpro_free_error(err) };
    msg
}

impl Group {
    /// Meets the other ranks of `launch` and opens `engine` between them,
    /// for tensors on `device`. Waits at most `timeout` for them, and fails
    /// any later collective that waits longer than that for a peer.
    pub fn connect(
        launch: &Launch,
        engine: Engine,
        device: Device,
        timeout: Duration,
    ) -> Result<Group> {
        let engine = engine.resolve(device);
        if engine == Engine::Nccl && !device.is_cuda() {
            return Err(Error::config(
                "distributed.engine",
                "nccl needs CUDA tensors: use gloo (or auto) with train.device = \"cpu\"",
            ));
        }
        if engine == Engine::Nccl && !nccl_compiled() {
            return Err(Error::config(
                "distributed.engine",
                "this pixpro was built without NCCL (the CUDA and NCCL headers of the torch wheel \
                 were missing at build time: run scripts/setup and rebuild)",
            ));
        }
        let backend = CString::new(engine.name()).expect("engine names have no NUL");
        let addr = CString::new(launch.master_addr.clone())
            .map_err(|_| Error::distributed("MASTER_ADDR contains a NUL byte"))?;
        let is_server = launch.rank == 0 && !launch.agent_store;
        let prefix = CString::new(launch.store_prefix()).expect("the prefix has no NUL");
        let mut err = std::ptr::null_mut();
        // SAFETY: valid C strings and an error out-pointer.
        let raw = unsafe {
            pixpro_group_new(
                backend.as_ptr(),
                addr.as_ptr(),
                launch.master_port as c_int,
                launch.rank as c_int,
                launch.world_size as c_int,
                is_server as c_int,
                prefix.as_ptr(),
                timeout.as_millis().min(i64::MAX as u128) as i64,
                &mut err,
            )
        };
        if raw.is_null() {
            return Err(Error::distributed(format!(
                "rank {} of {} could not join the run at {}:{} with {}: {}",
                launch.rank,
                launch.world_size,
                launch.master_addr,
                launch.master_port,
                engine.name(),
                take_error(err)
            )));
        }
        Ok(Group { raw, rank: launch.rank, world_size: launch.world_size, device })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    fn failed(&self, what: &str, err: *mut c_char) -> Error {
        Error::distributed(format!(
            "rank {} of {}: {what} failed, most likely because another rank stopped: {}",
            self.rank,
            self.world_size,
            take_error(err)
        ))
    }

    /// Replaces each tensor by its sum over all ranks, in place. The tensors
    /// must be contiguous, on this group's device, and the same shapes in
    /// the same order on every rank.
    pub fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        let mut ptrs: Vec<*mut C_tensor> = tensors.iter_mut().map(|t| t.as_mut_ptr()).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: live tensor handles, borrowed for the call.
        let rc = unsafe {
            pixpro_all_reduce_sum(self.raw, ptrs.as_mut_ptr(), ptrs.len() as c_int, &mut err)
        };
        if rc != 0 {
            return Err(self.failed("all-reduce", err));
        }
        Ok(())
    }

    /// Overwrites each tensor with rank `root`'s, in place.
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        let mut ptrs: Vec<*mut C_tensor> = tensors.iter_mut().map(|t| t.as_mut_ptr()).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: live tensor handles, borrowed for the call.
        let rc = unsafe {
            pixpro_broadcast(
                self.raw,
                ptrs.as_mut_ptr(),
                ptrs.len() as c_int,
                root as c_int,
                &mut err,
            )
        };
        if rc != 0 {
            return Err(self.failed("broadcast", err));
        }
        Ok(())
    }

    /// The sum of `x` over all ranks, as a new tensor whose gradient is the
    /// sum of the ranks' gradients: every rank's output depends on every
    /// rank's input.
    pub fn all_reduce_sum_autograd(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.contiguous();
        let mut err = std::ptr::null_mut();
        // SAFETY: a live tensor handle; the result is a new handle we own.
        let y = unsafe { pixpro_all_reduce_sum_autograd(self.raw, x.as_mut_ptr(), &mut err) };
        if y.is_null() {
            return Err(self.failed("all-reduce", err));
        }
        // SAFETY: `y` is a fresh `at::Tensor*`, the type tch's handles are.
        Ok(unsafe { Tensor::from_ptr(y) })
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        self.all_reduce_sum(&mut [Tensor::zeros([1], (Kind::Float, self.device))])
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by pixpro_group_new, freed once.
        unsafe { pixpro_group_free(self.raw) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let map: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn torchrun_variables() {
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29555"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            l,
            Launch {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                master_addr: "node0".into(),
                master_port: 29555,
                agent_store: true,
                restart: 2,
            }
        );
    }

    #[test]
    fn slurm_and_open_mpi_fallbacks_and_default_port() {
        let l = launch(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "n1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world_size, l.local_rank, l.master_port), (1, 2, 1, 29500));
        assert!(!l.agent_store);
        assert_eq!(l.restart, 0);
        let l = launch(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "8"),
            ("MASTER_ADDR", "n1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world_size, l.local_rank), (0, 8, 0));
    }

    #[test]
    fn one_process_is_no_launch_unless_torchrun_says_so() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(), None);
        let l = launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap().unwrap();
        assert_eq!((l.world_size, l.master_addr.as_str()), (1, "127.0.0.1"));
    }

    #[test]
    fn bad_launches_say_which_variable() {
        let msg = |vars: &[(&str, &str)]| launch(vars).unwrap_err().to_string();
        assert!(msg(&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")]).contains("RANK is not"));
        assert!(msg(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")])
            .contains("RANK=2 is not below WORLD_SIZE=2"));
        assert!(msg(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("MASTER_ADDR is not set"));
        assert!(
            msg(&[("RANK", "x"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")]).contains("RANK=\"x\"")
        );
        assert!(msg(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "99999")
        ])
        .contains("MASTER_PORT"));
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Rank `rank` of `world` on loopback `port`, over Gloo.
    fn connect(rank: usize, world_size: usize, port: u16) -> Group {
        let l = Launch {
            rank,
            world_size,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            agent_store: false,
            restart: 0,
        };
        Group::connect(&l, Engine::Auto, Device::Cpu, Duration::from_secs(30)).unwrap()
    }

    /// A process group of this process alone, on a free loopback port.
    pub(crate) fn group_of_one() -> Group {
        connect(0, 1, free_port())
    }

    /// The two ranks of a group in this process, for one thread each: what
    /// two processes would do, with less to start.
    pub(crate) fn two_rank_group() -> [Group; 2] {
        let port = free_port();
        std::thread::scope(|s| {
            let rank1 = s.spawn(|| connect(1, 2, port));
            [connect(0, 2, port), rank1.join().unwrap()]
        })
    }

    #[test]
    fn one_rank_group_reduces_broadcasts_and_differentiates() {
        let g = group_of_one();
        let mut t = [Tensor::from_slice(&[1f32, 2.0]), Tensor::from_slice(&[3f32])];
        g.all_reduce_sum(&mut t).unwrap();
        g.broadcast(&mut t, 0).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t[0]).unwrap(), vec![1.0, 2.0]);
        let x = Tensor::from_slice(&[2f32, 5.0]).set_requires_grad(true);
        let y = g.all_reduce_sum_autograd(&x).unwrap();
        (&y * &y).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), vec![4.0, 10.0]);
        g.barrier().unwrap();
    }
}
