//! BPF local storage: values kept in the kernel object they belong to (a task, a socket),
//! found by a pointer walk with no hashing, allocated once per object and freed with it.
//!
//! aya-ebpf 0.2 has no local-storage map types, so the maps are declared the way libbpf (and
//! newer aya-ebpf's `btf_maps`) do: a struct in `.maps` whose members' BTF types encode the
//! map type, key, value and flags. The kernel insists on BTF for local-storage maps, which
//! this provides. The helpers need BTF-typed object pointers, so only tp_btf programs use them;
//! the raw_tp fallbacks keep hash maps.
use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE,
        bpf_map_type::{BPF_MAP_TYPE_SK_STORAGE, BPF_MAP_TYPE_TASK_STORAGE},
    },
    helpers::generated::{bpf_sk_storage_delete, bpf_sk_storage_get, bpf_task_storage_get},
};

use crate::task::TaskPtr;

/// BTF-defined local-storage map of `V` of kind `MAP_TYPE`: member types carry the definition,
/// values are never read.
#[repr(C)]
pub struct StorageDef<V, const MAP_TYPE: usize> {
    r#type: *const [i32; MAP_TYPE],
    key: *const i32,
    value: *const V,
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are null placeholders only the loader interprets; the program never reads
// or writes them (the map pointer is the static's address, rewritten to the map by relocation).
unsafe impl<V, const MAP_TYPE: usize> Sync for StorageDef<V, MAP_TYPE> {}

impl<V, const MAP_TYPE: usize> StorageDef<V, MAP_TYPE> {
    pub const fn new() -> Self {
        Self { r#type: core::ptr::null(), key: core::ptr::null(), value: core::ptr::null(), map_flags: core::ptr::null() }
    }

    fn map(&'static self) -> *mut core::ffi::c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }
}

const fn flags(create: bool) -> u64 {
    if create { BPF_LOCAL_STORAGE_GET_F_CREATE as u64 } else { 0 }
}

/// Task-local storage (`task->bpf_storage`).
pub type TaskStorageDef<V> = StorageDef<V, { BPF_MAP_TYPE_TASK_STORAGE as usize }>;

/// Socket-local storage (`sk->sk_bpf_storage`).
pub type SkStorageDef<V> = StorageDef<V, { BPF_MAP_TYPE_SK_STORAGE as usize }>;

impl<V> TaskStorageDef<V> {
    /// `task`'s value, zero-filled on first use when `CREATE`.
    #[inline(always)]
    pub fn get<const CREATE: bool>(&'static self, task: TaskPtr) -> Option<*mut V> {
        // SAFETY: `task` is a BTF-typed task_struct pointer (a tp_btf argument or
        // bpf_get_current_task_btf; the verifier rejects anything else); a NULL value with
        // F_CREATE zero-fills a new entry. A NULL return (no entry, allocation failure, or the
        // helper's recursion guard) is handled by the caller.
        let p = unsafe { bpf_task_storage_get(self.map(), task.cast_mut().cast(), core::ptr::null_mut(), flags(CREATE)) };
        if p.is_null() { None } else { Some(p.cast()) }
    }
}

impl<V> SkStorageDef<V> {
    /// `sk`'s value, zero-filled on first use when `CREATE`.
    #[inline(always)]
    pub fn get<const CREATE: bool>(&'static self, sk: TaskPtr) -> Option<*mut V> {
        // SAFETY: `sk` is a BTF-typed `struct sock` pointer (a tp_btf argument; the verifier
        // rejects anything else). A NULL return (no entry, allocation failure, hard irq) is
        // handled by the caller.
        let p = unsafe { bpf_sk_storage_get(self.map(), sk.cast_mut().cast(), core::ptr::null_mut(), flags(CREATE)) };
        if p.is_null() { None } else { Some(p.cast()) }
    }

    /// Forgets `sk`'s value (it is freed with the socket anyway).
    #[inline(always)]
    pub fn delete(&'static self, sk: TaskPtr) {
        // SAFETY: as in `get`; deleting a missing entry is an error we have no use for.
        let _ = unsafe { bpf_sk_storage_delete(self.map(), sk.cast_mut().cast()) };
    }
}
