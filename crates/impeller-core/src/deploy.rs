//! Deployments: which model package each device should run, and why.
//!
//! A deployment names a package, a target condition over a device's tags and profile, and a
//! priority, as Azure IoT Edge deployments do. Every device gets the package of the
//! highest-priority deployment whose condition it matches (ties go to the newest deployment,
//! then to the name), and the hub tells it so in the retained `desired` message.
//!
//! Target conditions (untrusted text from operators; errors name the column):
//!
//! ```text
//! cond  := or
//! or    := and ("OR" and)*
//! and   := not ("AND" not)*
//! not   := "NOT" not | "(" or ")" | "*" | field ("=" | "!=") 'string'
//! field := "tags." name | "profile" | "id"
//! ```
//!
//! Keywords are case-insensitive; a quote inside a string is written twice (`'o''brien'`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A parsed target condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    All,
    Eq(Field, String),
    Ne(Field, String),
    Not(Box<Condition>),
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Tag(String),
    Profile,
    Id,
}

/// What a condition is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct DeviceFacts<'a> {
    pub id: &'a str,
    pub profile: &'a str,
    pub tags: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target condition, column {column}: {message}")]
pub struct ConditionError {
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

const MAX_CONDITION_LEN: usize = 4096;
const MAX_DEPTH: usize = 64;

impl Condition {
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        if text.len() > MAX_CONDITION_LEN {
            return Err(ConditionError { column: 1, message: format!("longer than {MAX_CONDITION_LEN} bytes") });
        }
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens: &tokens, pos: 0, end: text.chars().count() + 1, depth: 0 };
        let c = p.or()?;
        match p.tokens.get(p.pos) {
            None => Ok(c),
            Some((col, t)) => Err(ConditionError { column: *col, message: format!("unexpected {}", t.describe()) }),
        }
    }

    pub fn matches(&self, d: &DeviceFacts<'_>) -> bool {
        let get = |f: &Field| -> Option<&str> {
            match f {
                Field::Tag(k) => d.tags.get(k).map(String::as_str),
                Field::Profile => Some(d.profile),
                Field::Id => Some(d.id),
            }
        };
        match self {
            Condition::All => true,
            Condition::Eq(f, v) => get(f) == Some(v.as_str()),
            // A device without the tag is "not equal" to any value, as in SQL's IS DISTINCT FROM.
            Condition::Ne(f, v) => get(f) != Some(v.as_str()),
            Condition::Not(c) => !c.matches(d),
            Condition::And(a, b) => a.matches(d) && b.matches(d),
            Condition::Or(a, b) => a.matches(d) || b.matches(d),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Eq,
    Ne,
    Open,
    Close,
    Star,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("`{w}`"),
            Token::Str(s) => format!("string '{s}'"),
            Token::Eq => "`=`".into(),
            Token::Ne => "`!=`".into(),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
            Token::Star => "`*`".into(),
        }
    }

    fn is_keyword(&self, k: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(k))
    }
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, ConditionError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let col = i + 1;
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | ')' | '*' | '=' => {
                let t = match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    '*' => Token::Star,
                    _ => Token::Eq,
                };
                out.push((col, t));
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push((col, Token::Ne));
                i += 2;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(ConditionError { column: col, message: "string is not closed".into() }),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => break,
                        Some(c) => {
                            s.push(*c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push((col, Token::Str(s)));
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let start = i;
                while chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)) {
                    i += 1;
                }
                out.push((col, Token::Word(chars[start..i].iter().collect())));
            }
            c => return Err(ConditionError { column: col, message: format!("unexpected character `{c}`") }),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [(usize, Token)],
    pos: usize,
    /// Column just past the end, for "expected … at the end" errors.
    end: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn column(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(c, _)| *c)
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ConditionError> {
        Err(ConditionError { column: self.column(), message: message.into() })
    }

    fn or(&mut self) -> Result<Condition, ConditionError> {
        let mut c = self.and()?;
        while self.peek().is_some_and(|t| t.is_keyword("or")) {
            self.pos += 1;
            c = Condition::Or(Box::new(c), Box::new(self.and()?));
        }
        Ok(c)
    }

    fn and(&mut self) -> Result<Condition, ConditionError> {
        let mut c = self.not()?;
        while self.peek().is_some_and(|t| t.is_keyword("and")) {
            self.pos += 1;
            c = Condition::And(Box::new(c), Box::new(self.not()?));
        }
        Ok(c)
    }

    fn not(&mut self) -> Result<Condition, ConditionError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(format!("nested deeper than {MAX_DEPTH}"));
        }
        let c = self.atom();
        self.depth -= 1;
        c
    }

    fn atom(&mut self) -> Result<Condition, ConditionError> {
        let Some(t) = self.peek().cloned() else { return self.fail("expected a condition at the end") };
        if t.is_keyword("not") {
            self.pos += 1;
            return Ok(Condition::Not(Box::new(self.not()?)));
        }
        match t {
            Token::Open => {
                self.pos += 1;
                let c = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return self.fail("expected `)`");
                }
                self.pos += 1;
                Ok(c)
            }
            Token::Star => {
                self.pos += 1;
                Ok(Condition::All)
            }
            Token::Word(w) => {
                let field = if let Some(tag) = w.strip_prefix("tags.") {
                    if tag.is_empty() {
                        return self.fail("`tags.` needs a tag name");
                    }
                    Field::Tag(tag.to_string())
                } else if w == "profile" {
                    Field::Profile
                } else if w == "id" {
                    Field::Id
                } else {
                    return self.fail(format!("unknown field `{w}` (use tags.NAME, profile or id)"));
                };
                self.pos += 1;
                let op = self.peek().cloned();
                if !matches!(op, Some(Token::Eq | Token::Ne)) {
                    return self.fail("expected `=` or `!=`");
                }
                self.pos += 1;
                let Some(Token::Str(value)) = self.peek().cloned() else {
                    return self.fail("expected a value in single quotes");
                };
                self.pos += 1;
                Ok(if op == Some(Token::Eq) { Condition::Eq(field, value) } else { Condition::Ne(field, value) })
            }
            other => self.fail(format!("unexpected {}", other.describe())),
        }
    }
}

/// A deployment as the resolver sees it.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    pub condition: Condition,
    pub priority: i64,
    pub created_ms: i64,
    pub package_sha256: String,
}

/// Which deployment applies to one device, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub deployment: String,
    pub package_sha256: String,
    /// Every deployment whose condition the device matches, the chosen one first.
    pub matched: Vec<String>,
    pub reason: String,
}

/// The deployment that applies to `device`, if any.
pub fn resolve<'a>(
    device: &DeviceFacts<'_>,
    deployments: impl IntoIterator<Item = &'a Deployment>,
) -> Option<Assignment> {
    let mut matched: Vec<&Deployment> = deployments.into_iter().filter(|d| d.condition.matches(device)).collect();
    matched.sort_by(|a, b| b.priority.cmp(&a.priority).then(b.created_ms.cmp(&a.created_ms)).then(a.name.cmp(&b.name)));
    let winner = *matched.first()?;
    let reason = match matched.get(1) {
        None => format!("only `{}` matches", winner.name),
        Some(second) if second.priority < winner.priority => {
            format!("`{}` has the highest priority ({}) of {} matching", winner.name, winner.priority, matched.len())
        }
        Some(_) => format!(
            "`{}` ties at priority {} and is the newest of {} matching",
            winner.name,
            winner.priority,
            matched.len()
        ),
    };
    Some(Assignment {
        deployment: winner.name.clone(),
        package_sha256: winner.package_sha256.clone(),
        matched: matched.iter().map(|d| d.name.clone()).collect(),
        reason,
    })
}

/// The retained `desired` message: the package a device should run. An empty retained message
/// means "no deployment applies": the device keeps what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    pub v: u32,
    pub deployment: String,
    pub package: PackageRef,
    /// Set when the hub aborted a deployment this device may have taken: a device running that
    /// package whose previous model is `package` goes back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackRef>,
}

/// The aborted deployment and package a device should leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRef {
    pub deployment: String,
    pub sha256: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRef {
    /// SHA-256 of the whole package file, hex.
    pub sha256: String,
    pub size: u64,
    pub model: String,
    pub version: String,
    pub release: u64,
}

impl PackageRef {
    /// Path of the package's content under the hub's API root.
    pub fn content_path(&self) -> String {
        format!("/api/v1/packages/{}/content", self.sha256)
    }
}

pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads a `desired` message (untrusted bytes): `None` for the empty "nothing desired" message.
pub fn decode_desired(bytes: &[u8]) -> Result<Option<Desired>, crate::wire::WireError> {
    use crate::wire::WireError;
    if bytes.is_empty() {
        return Ok(None);
    }
    let d: Desired = serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))?;
    if d.v != crate::wire::SCHEMA_VERSION {
        return Err(WireError::Version { found: d.v });
    }
    if !valid_sha256(&d.package.sha256) {
        return Err(WireError::Invalid("package.sha256 must be 64 lowercase hex digits".into()));
    }
    if let Some(r) = &d.rollback
        && !valid_sha256(&r.sha256)
    {
        return Err(WireError::Invalid("rollback.sha256 must be 64 lowercase hex digits".into()));
    }
    Ok(Some(d))
}

/// Where a device is with the update the hub asked for; sent in `update` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Downloading,
    Verifying,
    Shadow,
    Active,
    Failed,
    RolledBack,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Downloading => "downloading",
            UpdateState::Verifying => "verifying",
            UpdateState::Shadow => "shadow",
            UpdateState::Active => "active",
            UpdateState::Failed => "failed",
            UpdateState::RolledBack => "rolled_back",
        }
    }
}

/// The detail of an `update` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateReport {
    pub deployment: String,
    pub sha256: String,
    pub state: UpdateState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Release of the model the device runs after this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_release: Option<u64>,
}

/// What one model did over a stretch of readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trial {
    pub scored: u64,
    pub alarms: u64,
    /// Scores that were NaN or infinite: a model that produces them is broken.
    pub nonfinite: u64,
}

impl Trial {
    pub fn add(&mut self, score: f64, alarm: bool) {
        self.scored += 1;
        self.alarms += u64::from(alarm);
        self.nonfinite += u64::from(!score.is_finite());
    }

    pub fn alarm_rate(&self) -> f64 {
        if self.scored == 0 { 0.0 } else { self.alarms as f64 / self.scored as f64 }
    }
}

/// When a new model is judged against the running one: in shadow before the switch, and during
/// the health watch after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialPolicy {
    /// Frames the running model must have scored before a judgement is made.
    pub min_frames: u64,
    /// How much higher (absolute, 0 to 1) the new model's alarm rate may be.
    pub max_alarm_rate_increase: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    Pass,
    /// Not enough frames yet to say.
    Undecided,
    Fail(String),
}

/// Above this alarm rate of the running model, a trial cannot judge false alarms.
pub const MAX_RUNNING_ALARM_RATE: f64 = 0.5;

/// How a failed trial that compared alarm rates begins ([`judge`]); the agent names its step
/// before it (`shadow scoring: `, `health watch: `).
const MORE_ALARMS: &str = "it alarms on ";

/// Whether a device's reason for refusing or rolling back a model is that it alarmed more than
/// the running one — not evidence against it on a pump with a confirmed fault, where a better
/// model alarms more — rather than a broken model (scores not finite, channels that do not fit),
/// which is evidence anywhere. Reads the reason [`judge`] wrote, so old agents' reports count too.
pub fn refused_on_alarm_rate(reason: &str) -> bool {
    ["shadow scoring: ", "health watch: "]
        .iter()
        .any(|step| reason.strip_prefix(step).is_some_and(|r| r.starts_with(MORE_ALARMS)))
}

/// Judges `candidate` against `running` over the same readings: undecided until the running
/// model has scored enough frames, and while it alarms on most of them.
pub fn judge(candidate: &Trial, running: &Trial, p: &TrialPolicy) -> Judgement {
    if candidate.nonfinite > 0 {
        return Judgement::Fail(format!("{} of {} scores were not finite", candidate.nonfinite, candidate.scored));
    }
    if running.scored < p.min_frames {
        return Judgement::Undecided;
    }
    if candidate.scored * 2 < running.scored {
        return Judgement::Fail(format!(
            "it scored {} of the {} frames the running model scored (channels or adapter do not fit)",
            candidate.scored, running.scored
        ));
    }
    let (new, old) = (candidate.alarm_rate(), running.alarm_rate());
    // A stretch the running model itself mostly alarms on is a fault or a drift it sees too:
    // the new model's alarms there are not false alarms, so the rates say nothing of it (seen:
    // a retrained model rolled back on a faulty pump, 92.9 % against 67.0 %, before any
    // technician had confirmed the fault). The fleet's alert-rate gate still judges it.
    if old > MAX_RUNNING_ALARM_RATE {
        return Judgement::Undecided;
    }
    if new - old > p.max_alarm_rate_increase {
        return Judgement::Fail(format!(
            "{MORE_ALARMS}{:.1} % of frames against {:.1} % for the running model (at most {:.1} points more allowed)",
            new * 100.0,
            old * 100.0,
            p.max_alarm_rate_increase * 100.0
        ));
    }
    Judgement::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn conditions_match_tags_profile_and_id() {
        let t = tags(&[("site", "north"), ("manufacturer", "acme")]);
        let d = DeviceFacts { id: "p1", profile: "arm-small", tags: &t };
        for (cond, want) in [
            ("*", true),
            ("tags.site = 'north'", true),
            ("tags.site='south'", false),
            ("tags.site = 'north' AND tags.manufacturer != 'acme'", false),
            ("tags.site = 'south' or profile = 'arm-small'", true),
            ("NOT (tags.site = 'north')", false),
            ("tags.missing != 'x'", true),
            ("tags.missing = 'x'", false),
            ("id = 'p1' and not id = 'p2'", true),
            ("tags.site = 'south' OR tags.site = 'north' AND tags.manufacturer = 'nord'", false),
        ] {
            assert_eq!(Condition::parse(cond).unwrap().matches(&d), want, "{cond}");
        }
        let q = tags(&[("owner", "o'brien")]);
        let d = DeviceFacts { id: "p1", profile: "x", tags: &q };
        assert!(Condition::parse("tags.owner = 'o''brien'").unwrap().matches(&d));
    }

    #[test]
    fn bad_conditions_say_where() {
        for (cond, column, words) in [
            ("", 1, "expected a condition"),
            ("tags.site = north", 13, "single quotes"),
            ("tags.site = 'north", 13, "not closed"),
            ("site = 'x'", 1, "unknown field"),
            ("tags.site 'x'", 11, "`=` or `!=`"),
            ("(tags.a = 'x'", 14, "`)`"),
            ("tags.a = 'x' tags.b = 'y'", 14, "unexpected"),
            ("tags.a = 'x' ; drop", 14, "unexpected character"),
            ("tags. = 'x'", 1, "tag name"),
        ] {
            let e = Condition::parse(cond).unwrap_err();
            assert_eq!(e.column, column, "{cond}: {e}");
            assert!(e.message.contains(words), "{cond}: {e}");
        }
        let deep = format!("{}*{}", "(".repeat(100), ")".repeat(100));
        assert!(Condition::parse(&deep).unwrap_err().message.contains("deeper"));
        let deep_not = format!("{}*", "not ".repeat(100));
        assert!(Condition::parse(&deep_not).is_err());
    }

    fn dep(name: &str, cond: &str, priority: i64, created_ms: i64) -> Deployment {
        Deployment {
            name: name.into(),
            condition: Condition::parse(cond).unwrap(),
            priority,
            created_ms,
            package_sha256: format!("{name}-pkg"),
        }
    }

    #[test]
    fn highest_priority_then_newest_wins_and_says_why() {
        let t = tags(&[("site", "north")]);
        let d = DeviceFacts { id: "p1", profile: "x", tags: &t };
        let deps = [
            dep("fleet", "*", 0, 1),
            dep("north", "tags.site = 'north'", 10, 2),
            dep("south", "tags.site = 'south'", 20, 3),
        ];
        let a = resolve(&d, &deps).unwrap();
        assert_eq!(a.deployment, "north");
        assert_eq!(a.matched, vec!["north", "fleet"]);
        assert!(a.reason.contains("highest priority (10) of 2"), "{}", a.reason);

        let tie = [dep("old", "*", 5, 1), dep("new", "*", 5, 2)];
        let a = resolve(&d, &tie).unwrap();
        assert_eq!(a.deployment, "new");
        assert!(a.reason.contains("newest"));
        assert!(resolve(&d, &[dep("south", "tags.site = 'south'", 1, 1)]).is_none());
    }

    #[test]
    fn a_candidate_is_judged_on_the_same_frames_as_the_running_model() {
        let p = TrialPolicy { min_frames: 100, max_alarm_rate_increase: 0.2 };
        let t = |scored, alarms| Trial { scored, alarms, nonfinite: 0 };
        assert_eq!(judge(&t(50, 0), &t(50, 0), &p), Judgement::Undecided);
        assert_eq!(judge(&t(200, 30), &t(200, 0), &p), Judgement::Pass);
        assert_eq!(judge(&t(200, 10), &t(200, 40), &p), Judgement::Pass, "fewer alarms is fine");
        let Judgement::Fail(why) = judge(&t(200, 100), &t(200, 20), &p) else { panic!() };
        assert!(why.contains("50.0 %") && why.contains("10.0 %"), "{why}");
        assert!(matches!(judge(&t(20, 0), &t(200, 0), &p), Judgement::Fail(w) if w.contains("20 of the 200")));
        assert_eq!(judge(&t(200, 186), &t(200, 134), &p), Judgement::Undecided, "the running model sees a fault too");
        assert!(matches!(judge(&t(200, 186), &t(200, 100), &p), Judgement::Fail(_)), "half is still judged");
        let broken = Trial { scored: 5, alarms: 0, nonfinite: 1 };
        let Judgement::Fail(nonfinite) = judge(&broken, &t(0, 0), &p) else {
            panic!("broken even before enough frames")
        };
        // What a device reports names its step first; only an alarm-rate judgement is excusable
        // on a faulty pump.
        assert!(refused_on_alarm_rate(&format!("shadow scoring: {why}")));
        assert!(refused_on_alarm_rate(&format!("health watch: {why}")));
        assert!(!refused_on_alarm_rate(&format!("shadow scoring: {nonfinite}")));
        let Judgement::Fail(misfit) = judge(&t(20, 0), &t(200, 0), &p) else { panic!() };
        assert!(!refused_on_alarm_rate(&format!("shadow scoring: {misfit}")));
        assert!(!refused_on_alarm_rate(&why), "a reason without its step is not a device's report");
        assert!(!refused_on_alarm_rate("signature: it alarms on nothing, it was never loaded"), "only a trial's step");
        let mut tr = Trial::default();
        tr.add(0.5, false);
        tr.add(f64::NAN, true);
        assert_eq!((tr.scored, tr.alarms, tr.nonfinite), (2, 1, 1));
    }

    #[test]
    fn desired_messages_are_checked() {
        let d = Desired {
            v: 1,
            deployment: "north".into(),
            package: PackageRef {
                sha256: "ab".repeat(32),
                size: 10,
                model: "m".into(),
                version: "1".into(),
                release: 3,
            },
            rollback: None,
        };
        let bytes = serde_json::to_vec(&d).unwrap();
        assert_eq!(decode_desired(&bytes).unwrap(), Some(d.clone()));
        assert_eq!(decode_desired(b"").unwrap(), None);
        let mut bad = d.clone();
        bad.package.sha256 = "../../etc/passwd".into();
        assert!(decode_desired(&serde_json::to_vec(&bad).unwrap()).is_err());
        let mut with_rollback = d.clone();
        with_rollback.rollback =
            Some(RollbackRef { deployment: "north-v3".into(), sha256: "cd".repeat(32), reason: "aborted".into() });
        let bytes = serde_json::to_vec(&with_rollback).unwrap();
        assert_eq!(decode_desired(&bytes).unwrap(), Some(with_rollback.clone()));
        with_rollback.rollback.as_mut().unwrap().sha256 = "x".into();
        assert!(decode_desired(&serde_json::to_vec(&with_rollback).unwrap()).is_err());
        let mut v2 = d;
        v2.v = 2;
        assert!(decode_desired(&serde_json::to_vec(&v2).unwrap()).is_err());
        assert!(decode_desired(b"{").is_err());
    }
}
