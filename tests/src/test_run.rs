//! One `BPF_PROG_TEST_RUN` of a loaded program on a frame, for the byte-exact tests of the XDP
//! program and the TC ingress and egress programs (`tests/tests/*_test_run.rs`).

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};

/// Room the output buffer leaves beyond the frame (a program may grow it).
const HEADROOM: usize = 256;

/// Run the XDP program `name` of `ebpf` once on `frame`: the action and the frame as it left it.
///
/// # Panics
/// When the program is missing, not XDP, or the kernel refuses the run.
#[must_use]
pub fn xdp(ebpf: &Ebpf, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let program: &Xdp = ebpf
        .program(name)
        .unwrap_or_else(|| panic!("program {name}"))
        .try_into()
        .expect("an XDP program");
    run(program, name, frame)
}

/// Run the TC program `name` of `ebpf` once on `frame`: the action (an int; the kernel hands it
/// back as u32) and the frame as it left it.
///
/// # Panics
/// When the program is missing, not TC, or the kernel refuses the run.
#[must_use]
pub fn tc(ebpf: &Ebpf, name: &str, frame: &[u8]) -> (i32, Vec<u8>) {
    let program: &SchedClassifier = ebpf
        .program(name)
        .unwrap_or_else(|| panic!("program {name}"))
        .try_into()
        .expect("a TC program");
    let (action, out) = run(program, name, frame);
    (action.cast_signed(), out)
}

/// One run of `program` (named `name` in messages) on `frame`: its return value and the frame.
fn run<P>(program: &P, name: &str, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + HEADROOM];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    let result = program
        .test_run(opts)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN ({name}) on {frame:02x?}: {e}"));
    out.truncate(usize::try_from(result.data_size_out).expect("size"));
    (result.return_value, out)
}
