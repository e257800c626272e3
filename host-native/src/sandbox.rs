//! The embedded `cairn:core` component, run inside wasmtime with limits.
//!
//! Each guest gets a memory cap (a hostile archive cannot make us allocate
//! without bound) and a per-call epoch deadline (it cannot loop forever).
//! Nothing is reachable from inside: no files, network, environment or
//! clocks beyond what WASI's defaults deny. Compiled code is cached on disk
//! so a verify does not pay the compile each time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({ path: "../wit", world: "cairn" });

pub use exports::cairn::core::types as wit;

/// The component, built from core/ by build.rs.
pub static COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cairn_core.wasm"));
/// Digest of the sources it was built from (see `component_hash.rs`).
pub const COMPONENT_SOURCE_HASH: &str =
    include_str!(concat!(env!("OUT_DIR"), "/component_hash.txt"));

const EPOCH_TICK: Duration = Duration::from_millis(50);

/// Limits for one guest instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest linear memory the guest may grow to, in bytes.
    pub memory: usize,
    /// Longest a single call into the guest may run.
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 256 << 20,
            call_timeout: Duration::from_secs(60),
        }
    }
}

pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
}

impl State {
    /// A guest's state: `wasi` is all it can reach, `memory` its cap.
    pub(crate) fn new(wasi: WasiCtx, memory: usize, hit: Arc<AtomicBool>) -> Self {
        State {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap { max: memory, hit },
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct MemoryCap {
    max: usize,
    hit: Arc<AtomicBool>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit.store(true, Ordering::SeqCst);
            return Err(wasmtime::Error::msg("memory limit reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The compiled component and its linker, shared by all instances.
pub struct Runtime {
    engine: Engine,
    pre: CairnPre<State>,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
static OWN_DATA: OnceLock<Result<Runtime, String>> = OnceLock::new();

impl Runtime {
    /// The process-wide runtime (compiled or loaded from cache on first use).
    pub fn get() -> Result<&'static Runtime> {
        Self::shared(&RUNTIME, true)
    }

    /// The runtime of guests that only ever see this process's own data
    /// (the `--engine wasm` encoders compressing the database being backed
    /// up): compiled without epoch checks, which cost a check at every loop
    /// head of libdeflate's and zstd's match finders. Nothing hostile reaches
    /// these guests, so there is no deadline to enforce; the memory cap stays.
    pub fn for_own_data() -> Result<&'static Runtime> {
        Self::shared(&OWN_DATA, false)
    }

    fn shared(
        cell: &'static OnceLock<Result<Runtime, String>>,
        deadlines: bool,
    ) -> Result<&'static Runtime> {
        cell.get_or_init(|| Runtime::new(deadlines).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("cannot start the WebAssembly engine: {e}"))
    }

    fn new(deadlines: bool) -> Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(deadlines);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| anyhow!("{e}"))?;
        let component = load_component(&engine, COMPONENT, "cairn-core")?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow!("{e}"))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("{e}"))?;
        let pre = CairnPre::new(pre).map_err(|e| anyhow!("{e}"))?;
        if !deadlines {
            return Ok(Runtime { engine, pre });
        }
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("cairn-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("cannot start the sandbox timer thread")?;
        Ok(Runtime { engine, pre })
    }

    /// The engine every guest runs on; its epoch ticks every 50 ms.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A store for one guest, with its memory cap and deadline set.
    pub(crate) fn store(
        &self,
        wasi: WasiCtx,
        limits: Limits,
        hit: Arc<AtomicBool>,
    ) -> Store<State> {
        let mut store = Store::new(&self.engine, State::new(wasi, limits.memory, hit));
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks(limits.call_timeout));
        store
    }

    /// A fresh, isolated instance.
    pub fn instance(&self, limits: Limits) -> Result<Guest> {
        let hit = Arc::new(AtomicBool::new(false));
        // No preopens, no inherited stdio, environment, arguments or network.
        let mut store = self.store(WasiCtx::builder().build(), limits, hit.clone());
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &hit, limits))?;
        Ok(Guest {
            store,
            bindings,
            limits,
            hit,
        })
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// Compiled code cache: `$CAIRN_CACHE_DIR`, else `$XDG_CACHE_HOME/cairn`,
/// else `~/.cache/cairn`. Keyed by the component's digest and the engine's
/// compatibility hash (wasmtime version and settings); a cache that does not load is rebuilt.
fn cache_path(engine: &Engine, component: &[u8], name: &str) -> Option<PathBuf> {
    use sha2::{Digest, Sha256};
    use std::hash::{Hash, Hasher};
    let dir = std::env::var_os("CAIRN_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("cairn")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cairn")))?;
    let digest = hex::encode(&Sha256::digest(component)[..12]);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    Some(dir.join(format!("{name}-{digest}-{:016x}.cwasm", h.finish())))
}

/// Compiles `component`, or loads its compiled code from the cache.
pub(crate) fn load_component(engine: &Engine, component: &[u8], name: &str) -> Result<Component> {
    let path = cache_path(engine, component, name);
    if let Some(p) = &path
        && p.exists()
        // Safety: the file is ours, written below from a compile by this
        // same wasmtime version; a failed load falls back to compiling.
        && let Ok(c) = unsafe { Component::deserialize_file(engine, p) }
    {
        return Ok(c);
    }
    let bytes = engine
        .precompile_component(component)
        .map_err(|e| anyhow!("compiling the {name} component: {e}"))?;
    if let Some(p) = &path {
        // Best effort: a read-only home only costs a compile next time.
        let _ = std::fs::create_dir_all(p.parent().unwrap()).and_then(|_| {
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, p)
        });
    }
    // Safety: bytes were produced just now by this engine.
    unsafe { Component::deserialize(engine, &bytes) }
        .map_err(|e| anyhow!("loading the {name} component: {e}"))
}

/// Turns a trap or host error from a guest call into a message a user can act on.
pub(crate) fn classify(e: wasmtime::Error, hit: &AtomicBool, limits: Limits) -> anyhow::Error {
    if hit.load(Ordering::SeqCst) {
        return anyhow!(
            "the sandbox hit its memory limit of {} MiB: the archive asks for more memory than a valid one needs \
             (raise --sandbox-memory only if you trust it)",
            limits.memory >> 20
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => anyhow!(
            "the sandbox stopped a call that ran longer than {} s (raise --sandbox-timeout only if you trust the archive)",
            limits.call_timeout.as_secs()
        ),
        Some(Trap::UnreachableCodeReached) => {
            anyhow!("the sandboxed decoder crashed (guest panic); the archive is malformed")
        }
        Some(t) => anyhow!("the sandboxed decoder trapped: {t}"),
        None => anyhow!("the sandbox failed: {e}"),
    }
}

/// One guest instance and its store.
pub struct Guest {
    store: Store<State>,
    bindings: Cairn,
    limits: Limits,
    hit: Arc<AtomicBool>,
}

/// A core error that crossed the boundary, as a core error.
pub fn core_error(e: wit::Error) -> cairn_core::Error {
    use cairn_core::ErrorCode as C;
    use wit::ErrorCode as W;
    let code = match e.code {
        W::NotAnArchive => C::NotAnArchive,
        W::UnsupportedVersion => C::UnsupportedVersion,
        W::CorruptHeader => C::CorruptHeader,
        W::KeyRequired => C::KeyRequired,
        W::WrongKey => C::WrongKey,
        W::InvalidKey => C::InvalidKey,
        W::Truncated => C::Truncated,
        W::CorruptChunk => C::CorruptChunk,
        W::ForeignChunk => C::ForeignChunk,
        W::OutOfOrder => C::OutOfOrder,
        W::CorruptTrailer => C::CorruptTrailer,
        W::ChecksumMismatch => C::ChecksumMismatch,
        W::TrailingData => C::TrailingData,
        W::InvalidParam => C::InvalidParam,
        W::Catalog => C::Catalog,
    };
    cairn_core::Error::Remote {
        code,
        message: e.message,
    }
}

/// Result of a guest call: outer = sandbox failure, inner = core error.
pub type CallResult<T> = Result<Result<T, cairn_core::Error>>;

impl Guest {
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Store<State>, &Cairn) -> wasmtime::Result<Result<T, wit::Error>>,
    ) -> CallResult<T> {
        self.store
            .set_epoch_deadline(ticks(self.limits.call_timeout));
        match f(&mut self.store, &self.bindings) {
            Ok(r) => Ok(r.map_err(core_error)),
            Err(e) => Err(classify(e, &self.hit, self.limits)),
        }
    }

    pub fn encoder_create(
        &mut self,
        p: &wit::WriterParams,
    ) -> CallResult<wasmtime::component::ResourceAny> {
        self.call(|s, b| b.cairn_core_codec().encoder().call_create(s, p))
    }

    pub fn encoder_preamble(&mut self, r: wasmtime::component::ResourceAny) -> Result<Vec<u8>> {
        self.call(|s, b| b.cairn_core_codec().encoder().call_preamble(s, r).map(Ok))?
            .map_err(Into::into)
    }

    pub fn encoder_chunk(
        &mut self,
        r: wasmtime::component::ResourceAny,
        index: u64,
        data: &[u8],
    ) -> CallResult<Vec<u8>> {
        self.call(|s, b| {
            b.cairn_core_codec()
                .encoder()
                .call_encode_chunk(s, r, index, data)
        })
    }

    pub fn encoder_finale(
        &mut self,
        r: wasmtime::component::ResourceAny,
        t: &cairn_core::chunk::Trailer,
    ) -> CallResult<Vec<u8>> {
        self.call(|s, b| {
            b.cairn_core_codec()
                .encoder()
                .call_finale(s, r, t.data_chunks, t.plain_len, &t.sha256)
        })
    }

    pub fn decoder_new(&mut self, key: &wit::Key) -> Result<wasmtime::component::ResourceAny> {
        self.call(|s, b| {
            b.cairn_core_codec()
                .decoder()
                .call_constructor(s, key)
                .map(Ok)
        })?
        .map_err(Into::into)
    }

    pub fn decoder_push(
        &mut self,
        r: wasmtime::component::ResourceAny,
        data: &[u8],
    ) -> CallResult<Vec<u8>> {
        self.call(|s, b| b.cairn_core_codec().decoder().call_push(s, r, data))
    }

    /// Pull-style decoding: hands bytes over without decoding any.
    pub fn decoder_feed(
        &mut self,
        r: wasmtime::component::ResourceAny,
        data: &[u8],
    ) -> CallResult<()> {
        self.call(|s, b| b.cairn_core_codec().decoder().call_feed(s, r, data))
    }

    /// Pull-style decoding: the next chunk's plaintext, or `None` once the
    /// bytes fed so far are used up.
    pub fn decoder_pull(
        &mut self,
        r: wasmtime::component::ResourceAny,
    ) -> CallResult<Option<Vec<u8>>> {
        self.call(|s, b| b.cairn_core_codec().decoder().call_pull(s, r))
    }

    pub fn decoder_finish(
        &mut self,
        r: wasmtime::component::ResourceAny,
    ) -> CallResult<wit::DecodeSummary> {
        self.call(|s, b| b.cairn_core_codec().decoder().call_finish(s, r))
    }

    pub fn sniff(&mut self, prefix: &[u8]) -> Result<wit::Kind> {
        self.call(|s, b| b.cairn_core_codec().call_sniff(s, prefix).map(Ok))?
            .map_err(Into::into)
    }

    pub fn manifest(&mut self) -> (&mut Store<State>, &exports::cairn::core::manifest::Guest) {
        self.store
            .set_epoch_deadline(ticks(self.limits.call_timeout));
        (&mut self.store, self.bindings.cairn_core_manifest())
    }
}
