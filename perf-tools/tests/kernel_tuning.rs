//! Guards `kernel-tuning/tune.sh`: `check` must exit 0 and report every knob on whatever
//! machine runs the test suite (CI hosts are untuned), and `apply --dry-run` must change
//! nothing. The assertions live in `kernel-tuning/test.sh` so they also run without cargo.

use std::path::Path;
use std::process::Command;

#[test]
fn tune_sh_check_reports_every_knob_and_exits_zero() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-tuning/test.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed:\n{stdout}\n{stderr}",
        script.display()
    );
    assert!(stdout.contains("kernel-tuning: ok"), "{stdout}");
}
