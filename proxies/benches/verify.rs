//! Verification time per attempt, for each kind of credential, measured in
//! the same run:
//!
//! - **generated** secrets (`dust.` + 32 letters, `$dust-secret$` digest)
//!   through [`Verifier::verify`], the path the SMTP and HTTP servers take:
//!   the right secret, a wrong one for the same name, and one for a name
//!   that does not exist (the decoy);
//! - **human** passwords (argon2id, the crate's default parameters) through
//!   [`Users::verify_with`], i.e. the work one verification thread does per
//!   attempt that reaches argon2: right, wrong, unknown name (the decoy);
//!   and a right human password that verified before (the known-good
//!   digest cache, no argon2).
//!
//! Run: `cargo bench -p dust-proxies --bench verify [-- ATTEMPTS]` (default
//! 20,000 attempts per generated case, 50 per argon2 case). Prints the
//! median and 99th percentile in µs and the ratio of argon2's median to the
//! generated path's.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::time::Instant;

use dust_proxies::access::auth::{
    hash_password, new_secret, Users, Verdict, Verifier, SECRET_LETTERS,
};

/// (median, p99) in µs of `times` (ns).
fn stats(mut times: Vec<u128>) -> (f64, f64) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

fn main() {
    let attempts: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let slow_attempts = 50;
    let bea = new_secret(SECRET_LETTERS);
    let human = "correct horse battery staple";
    let users = Users::new([
        ("bea".to_string(), bea.hash.clone()),
        (
            "alice".to_string(),
            hash_password(human.as_bytes()).unwrap(),
        ),
    ])
    .unwrap();
    let verifier = Verifier::new(users.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wrong: Vec<String> = (0..attempts)
        .map(|_| new_secret(SECRET_LETTERS).secret)
        .collect();

    let mut rows: Vec<(&str, (f64, f64))> = Vec::new();
    let time_verifier = |name: &str, secret: &dyn Fn(usize) -> String, expect: Verdict| {
        let mut times = Vec::with_capacity(attempts);
        for i in 0..attempts {
            let s = secret(i);
            let t = Instant::now();
            let v = rt.block_on(verifier.verify(name, s.as_bytes()));
            times.push(t.elapsed().as_nanos());
            assert_eq!(v, expect, "{name}");
        }
        stats(times)
    };
    rows.push((
        "generated, right",
        time_verifier("bea", &|_| bea.secret.clone(), Verdict::Ok),
    ));
    rows.push((
        "generated, wrong",
        time_verifier("bea", &|i| wrong[i].clone(), Verdict::Wrong),
    ));
    rows.push((
        "generated, unknown name",
        time_verifier("nobody", &|i| wrong[i].clone(), Verdict::Wrong),
    ));
    // The known-good cache: alice's password verified once before.
    assert_eq!(
        rt.block_on(verifier.verify("alice", human.as_bytes())),
        Verdict::Ok
    );
    rows.push((
        "human, known good (cache)",
        time_verifier("alice", &|_| human.to_string(), Verdict::Ok),
    ));

    let mut memory = Vec::new();
    let mut time_argon2 = |name: &str, secret: &str, expect: bool| {
        let mut times = Vec::with_capacity(slow_attempts);
        for _ in 0..slow_attempts {
            let t = Instant::now();
            let ok = users.verify_with(name, secret.as_bytes(), &mut memory);
            times.push(t.elapsed().as_nanos());
            assert_eq!(ok, expect, "{name}");
        }
        stats(times)
    };
    rows.push(("human (argon2), right", time_argon2("alice", human, true)));
    rows.push((
        "human (argon2), wrong",
        time_argon2("alice", "guess", false),
    ));
    rows.push((
        "human (argon2), unknown name",
        time_argon2("nobody", "guess", false),
    ));

    println!(
        "verification per attempt ({attempts} generated / {slow_attempts} argon2 attempts a case)"
    );
    println!("{:30} {:>12} {:>12}", "case", "median µs", "p99 µs");
    for (case, (median, p99)) in &rows {
        println!("{case:30} {median:12.2} {p99:12.2}");
    }
    let generated_wrong = rows[1].1 .0;
    let argon2_wrong = rows[5].1 .0;
    println!(
        "a wrong human password costs the mote {:.0}x a wrong generated secret (medians)",
        argon2_wrong / generated_wrong
    );
    println!(
        "unknown name / known name: generated {:.2}, argon2 {:.2} (medians; 1.00 = same cost)",
        rows[2].1 .0 / rows[1].1 .0,
        rows[6].1 .0 / rows[5].1 .0
    );
}
