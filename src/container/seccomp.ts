/**
 * Seccomp for containers: the built-in RuntimeDefault profile, and Localhost profiles
 * (Docker/Moby JSON, the format kubelet users and critest write) translated to the OCI form.
 *
 * RuntimeDefault is an allow list: every syscall not named below fails with EPERM. It is
 * meant to behave like containerd's and Docker's default profiles — ordinary programs run,
 * while the calls that reach kernel-global state (module loading, mount, namespaces, clock,
 * reboot, keyrings, kexec, bpf, perf...) are refused unless the container holds the
 * capability that guards them. The data is grouped by purpose so a reviewer can see why a
 * call is (or is not) here; syscalls a kernel or libseccomp does not know are skipped by crun.
 */
import { InvalidArgumentError } from '../errors.js';
import type { OciSeccomp, OciSeccompArg, OciSeccompSyscall } from '../os/oci-spec.js';

const EPERM = 1;
const ENOSYS = 38;

/** A whitespace-separated list of names, so the tables below stay readable. */
function words(text: string): string[] {
  return text.split(/\s+/).filter(Boolean);
}

/** Syscalls every container may make. */
const ALLOWED_ALWAYS: Record<string, readonly string[]> = {
  // ptrace cannot bypass seccomp since Linux 4.8, older than any kernel rootless-cri supports.
  processes: words(`
    execve execveat exit exit_group fork vfork wait4 waitid waitpid getpid getppid gettid
    getpgid getpgrp getsid setpgid setsid kill tkill tgkill pidfd_open pidfd_send_signal
    process_mrelease prctl arch_prctl set_tid_address set_robust_list get_robust_list rseq
    restart_syscall pause getrusage times sysinfo uname getcpu ptrace seccomp capget capset
    landlock_add_rule landlock_create_ruleset landlock_restrict_self
  `),
  credentials: words(`
    getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid
    getresuid32 getresgid getresgid32 getgroups getgroups32 setuid setuid32 setgid setgid32
    setreuid setreuid32 setregid setregid32 setresuid setresuid32 setresgid setresgid32
    setgroups setgroups32 setfsuid setfsuid32 setfsgid setfsgid32
  `),
  signals: words(`
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sigaltstack signalfd signalfd4
    sigprocmask sigreturn alarm
  `),
  memory: words(`
    brk mmap mmap2 munmap mremap mprotect madvise mincore msync mlock mlock2 mlockall
    munlock munlockall remap_file_pages membarrier memfd_create memfd_secret pkey_alloc
    pkey_free pkey_mprotect map_shadow_stack
  `),
  files: words(`
    open openat openat2 creat close close_range read readv pread64 preadv preadv2 write
    writev pwrite64 pwritev pwritev2 lseek _llseek dup dup2 dup3 fcntl fcntl64 flock fsync
    fdatasync sync syncfs sync_file_range truncate truncate64 ftruncate ftruncate64
    fallocate fadvise64 fadvise64_64 readahead sendfile sendfile64 splice tee vmsplice
    copy_file_range cachestat stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat
    statx statfs statfs64 fstatfs fstatfs64 access faccessat faccessat2 getdents getdents64
    getcwd chdir fchdir mkdir mkdirat rmdir mknod mknodat link linkat symlink symlinkat
    unlink unlinkat rename renameat renameat2 readlink readlinkat umask chmod fchmod
    fchmodat fchmodat2 chown chown32 fchown fchown32 fchownat lchown lchown32 utime utimes
    utimensat utimensat_time64 futimesat getxattr lgetxattr fgetxattr setxattr lsetxattr
    fsetxattr listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr ioctl
    pipe pipe2 inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark
  `),
  polling: words(`
    select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64 epoll_create
    epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait epoll_pwait2
    eventfd eventfd2 io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents
    io_pgetevents_time64 ioprio_get ioprio_set
  `),
  time: words(`
    time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64
    clock_nanosleep clock_nanosleep_time64 nanosleep getitimer setitimer timer_create
    timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
    timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
    timerfd_settime64 adjtimex clock_adjtime clock_adjtime64
  `),
  scheduling: words(`
    sched_yield sched_getaffinity sched_setaffinity sched_getattr sched_setattr
    sched_getparam sched_setparam sched_getscheduler sched_setscheduler
    sched_get_priority_max sched_get_priority_min sched_rr_get_interval
    sched_rr_get_interval_time64 getpriority setpriority getrlimit setrlimit ugetrlimit
    prlimit64 getrandom
  `),
  futexes: words(`
    futex futex_time64 futex_waitv futex_wait futex_wake futex_requeue
  `),
  sockets: words(`
    socketpair bind connect listen accept accept4 getsockname getpeername getsockopt
    setsockopt send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64
    shutdown socketcall
  `),
  ipc: words(`
    ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl shmget
    shmat shmdt shmctl mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive
    mq_timedreceive_time64 mq_notify mq_getsetattr
  `),
  'thread areas': words(`
    set_thread_area get_thread_area modify_ldt
  `),
  arm: words(`
    arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls
  `),
};

/** Syscalls that need a capability: allowed only when the container holds it. */
const ALLOWED_WITH_CAPABILITY: Record<string, readonly string[]> = {
  CAP_SYS_ADMIN: words(`
    mount umount umount2 mount_setattr move_mount open_tree fsopen fsconfig fsmount fspick
    unshare setns sethostname setdomainname quotactl quotactl_fd name_to_handle_at
    fanotify_init lookup_dcookie syslog bpf perf_event_open
  `),
  CAP_SYS_BOOT: words(`
    reboot
  `),
  CAP_SYS_CHROOT: words(`
    chroot
  `),
  CAP_SYS_MODULE: words(`
    init_module finit_module delete_module
  `),
  CAP_SYS_PACCT: words(`
    acct
  `),
  CAP_SYS_PTRACE: words(`
    kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev
  `),
  CAP_SYS_RAWIO: words(`
    iopl ioperm
  `),
  CAP_SYS_TIME: words(`
    settimeofday stime clock_settime clock_settime64
  `),
  CAP_SYS_TTY_CONFIG: words(`
    vhangup
  `),
  CAP_SYS_NICE: words(`
    get_mempolicy set_mempolicy mbind set_mempolicy_home_node
  `),
  CAP_SYSLOG: words(`
    syslog
  `),
  CAP_BPF: words(`
    bpf
  `),
  CAP_PERFMON: words(`
    perf_event_open
  `),
  CAP_DAC_READ_SEARCH: words(`
    open_by_handle_at
  `),
};

/** clone() flags that create namespaces: refused without CAP_SYS_ADMIN. */
const CLONE_NAMESPACE_FLAGS =
  0x00020000 | // CLONE_NEWNS
  0x02000000 | // CLONE_NEWCGROUP
  0x04000000 | // CLONE_NEWUTS
  0x08000000 | // CLONE_NEWIPC
  0x10000000 | // CLONE_NEWUSER
  0x20000000 | // CLONE_NEWPID
  0x40000000; // CLONE_NEWNET

/** personality() values that only select an ABI flavour (PER_LINUX, PER_LINUX32, UNAME26, query). */
const SAFE_PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

const AF_VSOCK = 40;

/** libseccomp architecture names for Node's process.arch. */
export function seccompArchitectures(nodeArch: string): string[] {
  switch (nodeArch) {
    case 'x64':
      return ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'];
    case 'arm64':
      return ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM'];
    case 'ia32':
      return ['SCMP_ARCH_X86'];
    case 'arm':
      return ['SCMP_ARCH_ARM'];
    default:
      return [];
  }
}

/** The RuntimeDefault profile for a container holding `capabilities` (its bounding set). */
export function defaultSeccompProfile(capabilities: readonly string[], nodeArch: string): OciSeccomp {
  const has = (cap: string) => capabilities.includes(cap);
  const allowed = new Set<string>(Object.values(ALLOWED_ALWAYS).flat());
  for (const [cap, names] of Object.entries(ALLOWED_WITH_CAPABILITY)) {
    if (has(cap)) for (const n of names) allowed.add(n);
  }
  const syscalls: OciSeccompSyscall[] = [{ names: [...allowed].sort(), action: 'SCMP_ACT_ALLOW' }];
  syscalls.push(
    ...SAFE_PERSONALITIES.map((value) => ({
      names: ['personality'],
      action: 'SCMP_ACT_ALLOW',
      args: [{ index: 0, value, op: 'SCMP_CMP_EQ' }],
    })),
  );
  syscalls.push({
    names: ['socket'],
    action: 'SCMP_ACT_ALLOW',
    args: [{ index: 0, value: AF_VSOCK, op: 'SCMP_CMP_NE' }],
  });
  if (has('CAP_SYS_ADMIN')) {
    syscalls.push({ names: ['clone', 'clone3'], action: 'SCMP_ACT_ALLOW' });
  } else {
    syscalls.push({
      names: ['clone'],
      action: 'SCMP_ACT_ALLOW',
      args: [{ index: 0, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }],
    });
    // clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
    syscalls.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS });
  }
  return {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: EPERM,
    architectures: seccompArchitectures(nodeArch),
    syscalls,
  };
}

const ACTIONS = new Set([
  'SCMP_ACT_KILL',
  'SCMP_ACT_KILL_PROCESS',
  'SCMP_ACT_KILL_THREAD',
  'SCMP_ACT_TRAP',
  'SCMP_ACT_ERRNO',
  'SCMP_ACT_TRACE',
  'SCMP_ACT_ALLOW',
  'SCMP_ACT_LOG',
]);
const OPERATORS = new Set([
  'SCMP_CMP_NE',
  'SCMP_CMP_LT',
  'SCMP_CMP_LE',
  'SCMP_CMP_EQ',
  'SCMP_CMP_GE',
  'SCMP_CMP_GT',
  'SCMP_CMP_MASKED_EQ',
]);
const FLAGS = new Set([
  'SECCOMP_FILTER_FLAG_TSYNC',
  'SECCOMP_FILTER_FLAG_LOG',
  'SECCOMP_FILTER_FLAG_SPEC_ALLOW',
  'SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV',
]);
/** Docker's `arches` use Go architecture names. */
const GO_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', ia32: '386', arm: 'arm' };

interface DockerCondition {
  caps?: string[];
  arches?: string[];
  minKernel?: string;
}

function compareKernel(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((x) => Number.parseInt(x, 10) || 0);
  const pb = b.split(/[.-]/).map((x) => Number.parseInt(x, 10) || 0);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

function bad(where: string, what: string): never {
  throw new InvalidArgumentError(`seccomp profile ${where}: ${what}`);
}

function stringList(value: unknown, where: string, field: string): string[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string'))
    bad(where, `"${field}" must be a list of strings`);
  return value as string[];
}

function checkAction(action: unknown, where: string): string {
  if (action === 'SCMP_ACT_NOTIFY')
    bad(where, 'SCMP_ACT_NOTIFY is not supported by rootless-cri (no seccomp agent)');
  if (typeof action !== 'string' || !ACTIONS.has(action))
    bad(where, `unknown action ${JSON.stringify(action)}`);
  return action;
}

function checkErrno(value: unknown, where: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 4095) {
    bad(where, `errnoRet ${JSON.stringify(value)} is not an errno number`);
  }
  return value;
}

function checkArg(arg: unknown, where: string): OciSeccompArg {
  const a = arg as Record<string, unknown> | null;
  if (!a || typeof a !== 'object') bad(where, 'an argument rule is not an object');
  const num = (v: unknown, name: string, optional: boolean): number | undefined => {
    if (v === undefined && optional) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      bad(where, `argument "${name}" must be a non-negative integer`);
    }
    return v;
  };
  const index = num(a.index, 'index', false)!;
  if (index > 5) bad(where, `argument index ${index} is out of range 0..5`);
  if (typeof a.op !== 'string' || !OPERATORS.has(a.op))
    bad(where, `unknown operator ${JSON.stringify(a.op)}`);
  const out: OciSeccompArg = { index, value: num(a.value, 'value', false)!, op: a.op };
  const two = num(a.valueTwo, 'valueTwo', true);
  if (two !== undefined) out.valueTwo = two;
  return out;
}

/**
 * A Localhost profile (Docker JSON; an OCI-style one is the same shape without the extras)
 * turned into the OCI form for this container: conditional entries are kept or dropped by the
 * container's capabilities, the architecture and the kernel, as Docker does.
 */
export function translateSeccompProfile(
  text: string,
  where: string,
  context: { capabilities: readonly string[]; nodeArch: string; kernelVersion: string },
): OciSeccomp {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new InvalidArgumentError(`seccomp profile ${where} is not valid JSON`, { cause: err });
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) bad(where, 'the document is not a JSON object');
  if (doc.listenerPath !== undefined && doc.listenerPath !== '') {
    bad(where, '"listenerPath" (seccomp notify) is not supported by rootless-cri');
  }
  const out: OciSeccomp = { defaultAction: checkAction(doc.defaultAction, where) };
  const defaultErrno = checkErrno(doc.defaultErrnoRet, where);
  if (defaultErrno !== undefined) out.defaultErrnoRet = defaultErrno;

  const native = seccompArchitectures(context.nodeArch)[0];
  let architectures = stringList(doc.architectures, where, 'architectures');
  if (Array.isArray(doc.archMap)) {
    architectures = [];
    for (const entry of doc.archMap as { architecture?: unknown; subArchitectures?: unknown }[]) {
      if (entry?.architecture === native) {
        architectures.push(native!, ...stringList(entry.subArchitectures, where, 'subArchitectures'));
      }
    }
  }
  if (architectures.some((a) => !a.startsWith('SCMP_ARCH_')))
    bad(where, 'architectures must be SCMP_ARCH_* names');
  if (architectures.length > 0) out.architectures = architectures;

  const flags = stringList(doc.flags, where, 'flags');
  for (const f of flags) if (!FLAGS.has(f)) bad(where, `unknown flag "${f}"`);
  if (flags.length > 0) out.flags = flags;

  const goArch = GO_ARCH[context.nodeArch] ?? context.nodeArch;
  const applies = (inc: DockerCondition | undefined, exc: DockerCondition | undefined): boolean => {
    if (inc) {
      if (inc.caps?.some((c) => !context.capabilities.includes(c))) return false;
      if (inc.arches && inc.arches.length > 0 && !inc.arches.includes(goArch)) return false;
      if (inc.minKernel && compareKernel(context.kernelVersion, inc.minKernel) < 0) return false;
    }
    if (exc) {
      if (exc.caps?.some((c) => context.capabilities.includes(c))) return false;
      if (exc.arches?.includes(goArch)) return false;
    }
    return true;
  };

  if (doc.syscalls !== undefined && !Array.isArray(doc.syscalls)) bad(where, '"syscalls" must be a list');
  const syscalls: OciSeccompSyscall[] = [];
  for (const raw of (doc.syscalls as unknown[] | undefined) ?? []) {
    const s = raw as Record<string, unknown> | null;
    if (!s || typeof s !== 'object') bad(where, 'a syscalls entry is not an object');
    if (!applies(s.includes as DockerCondition | undefined, s.excludes as DockerCondition | undefined))
      continue;
    const names = stringList(s.names, where, 'names');
    if (typeof s.name === 'string' && s.name !== '') names.push(s.name);
    if (names.length === 0) bad(where, 'a syscalls entry names no syscall');
    if (names.some((n) => !/^[a-z0-9_]{1,64}$/.test(n)))
      bad(where, 'syscall names are lower-case identifiers');
    const entry: OciSeccompSyscall = { names, action: checkAction(s.action, where) };
    const errno = checkErrno(s.errnoRet, where);
    if (errno !== undefined) entry.errnoRet = errno;
    if (s.args !== undefined && s.args !== null) {
      if (!Array.isArray(s.args)) bad(where, '"args" must be a list');
      if (s.args.length > 0) entry.args = s.args.map((a) => checkArg(a, where));
    }
    syscalls.push(entry);
  }
  if (syscalls.length > 0) out.syscalls = syscalls;
  return out;
}
