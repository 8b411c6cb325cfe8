//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (an unexpected error; the message says what)
  2  usage error (unknown flag, missing argument)
  3  invalid input: a data, configuration or model file that cannot be read or is wrong
  4  a check failed: a pipeline's gate or fit check, or `impeller audit verify` found the audit trail broken";

/// Impeller: anomaly-detection models for pumps, from training to the edge.
#[derive(Debug, Parser)]
#[command(name = "impeller", version, about, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    /// More log output on standard error (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only log errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a benchmark.
    #[command(subcommand)]
    Bench(Bench),
    /// Train a model on normal operation from a CSV file and write the model file.
    Train(TrainArgs),
    /// Score the rows of a CSV file with a model, one row at a time as a device would.
    Score(ScoreArgs),
    /// Model files, and the hub's model registry: versions, aliases, lineage.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Reproducible training pipelines: dataset, train, evaluate, validate against the champion,
    /// package per target, sign, register; every step cached by the hash of its inputs.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Datasets: CSV folders in the SKAB layout, or snapshots of what the fleet sent to the hub,
    /// stored as Parquet and addressed by their content.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Labelled incidents (a confirmed fault, a test): they label the rows of later snapshots.
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// Technicians' verdicts on alerts, and alert precision per model version.
    #[command(subcommand)]
    Feedback(FeedbackCommand),
    /// Automatic retraining: a model's policy (triggers, data, approvals, budget), its state,
    /// and approval of the step a retraining awaits.
    #[command(subcommand)]
    Retrain(RetrainCommand),
    /// Signing keys for model packages.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Build, sign, verify and inspect model packages.
    #[command(subcommand)]
    Package(PackageCommand),
    /// Run the hub: receives what the edge agents send and stores each message once. Embedded
    /// MQTT broker and SQLite by default; runs until Ctrl-C.
    #[command(args_conflicts_with_subcommands = true)]
    Hub(HubCommand),
    /// Provision, list and revoke devices on a running hub (through its API).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// API tokens for operators (in the hub's database: the first admin token comes from here).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Deployments on a running hub (through its API): which package which devices run.
    #[command(subcommand)]
    Deploy(DeployCommand),
    /// The fleet's alerts on a running hub (through its API), oldest first.
    Alerts(FleetQueryArgs),
    /// Drift of the devices' features against their models' training data, as the hub judged
    /// each sketch (through its API), oldest first.
    Drift(FleetQueryArgs),
    /// Each device's alert rate over the last day of its clock against its model version's
    /// validation false-alarm rate, as the hub last judged it (through its API), by device.
    AlertRates(AlertRateArgs),
    /// The hub's tamper-evident audit trail (through its API, or an export): verify, export,
    /// trace an artifact.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The whole lifecycle on this machine: a hub, a simulated fleet with an edge agent per
    /// pump, training, signed packages, staged rollouts, faults, and the alerts checked
    /// against the simulator's ground truth. Ctrl-C stops it.
    Demo(DemoArgs),
    /// Simulate a fleet of pumps (physics, three manufacturers, faults, drift) and write each
    /// pump's readings as a SKAB-layout CSV file, or serve them live over MQTT or as Modbus TCP
    /// controllers; the ground truth in fleet.json. With --skab, replay SKAB files live instead.
    Sim(SimArgs),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every record's hash and link to the one before, and the hub's signed checkpoints
    /// with the pinned key; finds any edited, deleted, inserted or reordered record.
    Verify {
        #[command(flatten)]
        source: AuditSource,
        /// The hub's audit public key (audit.public.json in its data folder); repeatable.
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
        /// The records need not start at the first (an export made with --since).
        #[arg(long)]
        partial: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write the records as JSON Lines, one record per line, oldest first.
    Export {
        /// Only records from this long ago, e.g. 7d (check such an export with verify --partial).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_s)]
        since: Option<u64>,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The records connected to an artifact (its SHA-256): from the training data through
    /// the model and the package to the deployments and the devices that ran it.
    Trace {
        artifact: String,
        #[command(flatten)]
        source: AuditSource,
        #[arg(long)]
        json: bool,
    },
}

/// Where the audit records come from: an export file, or the hub.
#[derive(Debug, Args)]
pub struct AuditSource {
    /// A JSON Lines export (impeller audit export) instead of the hub.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Which devices: one, or those with the tags given.
#[derive(Debug, Args)]
pub struct DeviceFilterArgs {
    #[arg(long)]
    pub device: Option<String>,
    /// Devices tagged site=…
    #[arg(long)]
    pub site: Option<String>,
    /// Devices tagged manufacturer=…
    #[arg(long)]
    pub manufacturer: Option<String>,
}

impl DeviceFilterArgs {
    /// The API's query parameters for the filters given.
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        [("device", &self.device), ("site", &self.site), ("manufacturer", &self.manufacturer)]
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect()
    }
}

/// Which devices and when, for `impeller alerts` and `impeller drift`.
#[derive(Debug, Args)]
pub struct FleetQueryArgs {
    #[command(flatten)]
    pub devices: DeviceFilterArgs,
    /// How far back (by the devices' clocks), e.g. 30m, 6h, 2d.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_s, default_value = "1d")]
    pub since: u64,
    /// At most this many, the most recent.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Which devices, for `impeller alert-rates`.
#[derive(Debug, Args)]
pub struct AlertRateArgs {
    #[command(flatten)]
    pub devices: DeviceFilterArgs,
    /// Only devices in this state.
    #[arg(long, value_parser = ["unjudged", "normal", "elevated"])]
    pub state: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The simulated fleet: how many pumps, from which seed, what happens to them.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Pumps in the fleet (manufacturers and sites take turns).
    #[arg(long, default_value_t = 24)]
    pub pumps: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of the pumps (0 to 1) that develop a fault; the six fault kinds take turns.
    #[arg(long, default_value_t = 0.5)]
    pub faulty_share: f64,
    /// A heat wave at this site (+10 °C over an hour), starting with the faults' window: drift,
    /// not a fault.
    #[arg(long, value_name = "SITE")]
    pub heat_wave: Option<String>,
    /// The season turning at this site: the ambient climbs 8 °C, evenly from the start of the
    /// faults' window to the end of the run, however long it is: a slow drift, not a fault.
    #[arg(long, value_name = "SITE")]
    pub season: Option<String>,
    /// Ageing discharge-pressure transmitters at this site: each reads 0.05 bar more every hour
    /// from the start of the faults' window, the pumps unchanged: drift, not a fault.
    #[arg(long, value_name = "SITE")]
    pub sensor_ageing: Option<String>,
    /// A new operating point at this site: from the start of the faults' window the process
    /// runs every pump at 2,650 rpm (reached over 10 minutes; the pumps run at 2,800 to 2,950
    /// before): less flow and head, by the affinity laws; drift, not a fault.
    #[arg(long, value_name = "SITE")]
    pub operating_point: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Simulated hours of live operation (faults begin between 30 % and 70 % of it).
    #[arg(long, default_value_t = 6.0)]
    pub hours: f64,
    /// Hours of healthy history the first models train on.
    #[arg(long, default_value_t = 48.0)]
    pub train_hours: f64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 360.0)]
    pub speed: f64,
    /// Seconds each rollout wave soaks before the next.
    #[arg(long, default_value_t = 4)]
    pub soak_s: u64,
    /// Where the hub's database, packages, agents' outboxes and the fleet's files go (must be
    /// empty or new; kept afterwards). Default: a temporary folder, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The hub's HTTP API (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub http_listen: String,
    /// The embedded MQTT broker's port (default: any free port).
    #[arg(long, value_name = "PORT")]
    pub mqtt_port: Option<u16>,
    /// After the summary, keep the hub and its dashboard up until Ctrl-C.
    #[arg(long)]
    pub stay: bool,
    /// No heat wave: by default the gulf site gets one (unless --heat-wave names another, or
    /// another site drift is asked for), drift that is not a fault, which the models'
    /// retraining policies react to.
    #[arg(long)]
    pub no_drift: bool,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Simulated hours of readings.
    #[arg(long, default_value_t = 12.0)]
    pub hours: f64,
    /// Faults begin between these fractions of the simulated time.
    #[arg(long, default_value = "0.25,0.75", value_name = "FROM,TO")]
    pub faults_between: String,
    /// Where the files go (created): each pump's readings as CSV, or, when serving live, the
    /// agents' source settings (sources/PUMP.toml); the ground truth (fleet.json) either way.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Serve the fleet live instead of writing files: publish each pump's readings to this MQTT
    /// broker (mqtt://HOST:PORT) on --topic, as the agent's MQTT source reads them.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// Each pump's topic; {pump} is replaced by the pump's id.
    #[arg(long, default_value = "impeller/sim/{pump}/readings")]
    pub topic: String,
    /// Serve the fleet live as Modbus TCP controllers, one per pump in its manufacturer's
    /// register map: the first pump on this address, the next on the following port, and so on.
    #[arg(long, value_name = "HOST:PORT")]
    pub modbus: Option<SocketAddr>,
    /// Simulated seconds per real second when serving live (Modbus controllers are polled in
    /// real time: at 1, agents see the pumps as the models were trained to).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Replay SKAB files live instead of simulating pumps (with --mqtt or --modbus): every CSV
    /// under this folder but anomaly-free, or this one file, each a device of its own, all
    /// starting now and keeping their rows' spacing; their labels are the ground truth
    /// (skab.json). Modbus controllers hold the testbed's sensors as f32 input registers.
    #[arg(long, value_name = "PATH", conflicts_with_all = [
        "pumps", "seed", "faulty_share", "heat_wave", "season", "sensor_ageing", "operating_point", "hours", "faults_between",
    ])]
    pub skab: Option<PathBuf>,
}

/// Which hub's API, and the operator's token.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The hub's HTTP address.
    #[arg(long, value_name = "URL", env = "IMPELLER_HUB", default_value = "http://127.0.0.1:8080")]
    pub hub: String,
    /// API token (impeller token create).
    #[arg(long, value_name = "TOKEN", env = "IMPELLER_TOKEN", default_value = "", hide_env_values = true)]
    pub token: String,
    /// For an https:// hub whose certificate the system does not trust: the CA certificate
    /// (PEM) it chains to, trusted besides the system's roots.
    #[arg(long, value_name = "FILE", env = "IMPELLER_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it, once (the hub keeps only a hash of it).
    Create {
        /// A name saying whose token it is.
        name: String,
        #[arg(long, value_enum)]
        role: TokenRole,
        #[command(flatten)]
        db: HubDb,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokenRole {
    /// Reads everything, changes nothing.
    Read,
    /// Uploads packages and manages deployments.
    Operator,
    /// Also provisions and revokes devices.
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Deploy a package to the devices matching a target condition.
    Create {
        /// Deployment name: 1 to 64 of A-Z a-z 0-9 . _ -
        name: String,
        /// The package: its SHA-256 (from `impeller package upload`) or a file to upload.
        #[arg(long)]
        package: String,
        /// Which devices, e.g. "tags.site = 'north' AND profile = 'arm-small'"; "*" for all.
        #[arg(long)]
        target: String,
        /// Where several deployments match a device, the highest priority wins.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        #[command(flatten)]
        rollout: RolloutArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List deployments.
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
    /// Where each device of a deployment is: pending, downloading, verifying, active, failed.
    Status {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
    /// Stop a deployment: its devices fall back to the next deployment that matches them
    /// (a device keeps a newer release than the one it falls back to).
    Stop {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Abort a deployment: it stops, and the devices its rollout took go back to the model
    /// they ran before it.
    Abort {
        name: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A staged rollout; without `--waves` a deployment reaches every device at once.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Cumulative percentages of the devices, e.g. 1,10,100.
    #[arg(long, value_delimiter = ',')]
    pub waves: Vec<f64>,
    /// How long each wave runs before the next starts, e.g. 30s, 10m, 2h.
    #[arg(long, default_value = "10m", value_parser = parse_duration_s)]
    pub soak: u64,
    /// Share of a wave's devices that must run the new model before the next wave.
    #[arg(long, default_value_t = 0.9)]
    pub min_active: f64,
    /// Abort when more than this share of the devices refused the package.
    #[arg(long, default_value_t = 0.0)]
    pub max_failed: f64,
    /// Abort when more than this share of the devices rolled it back by themselves.
    #[arg(long, default_value_t = 0.0)]
    pub max_rolled_back: f64,
    /// Abort when alerts per device-day rise by more than this against the previous model.
    #[arg(long)]
    pub max_alert_rate_increase: Option<f64>,
}

/// `90`, `90s`, `15m`, `2h`, `1d` → seconds.
pub fn parse_duration_s(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = digits.parse().map_err(|_| format!("`{s}`: a whole number with s, m, h or d, e.g. 10m"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("`{s}` is too long"))
}

/// Where the hub's database is: `--database URL`, or SQLite in `--data-dir`.
#[derive(Debug, Args)]
pub struct HubDb {
    /// The hub's data folder.
    #[arg(long, value_name = "DIR", default_value = "impeller-hub-data")]
    pub data_dir: PathBuf,
    /// Database URL: sqlite:PATH or postgres://… (default: sqlite in the data folder).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
}

impl HubDb {
    pub fn url(&self) -> String {
        self.database.clone().unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("hub.db").display()))
    }
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Provision a device and print its secret, once (the hub keeps only a hash of it).
    /// Needs an admin token.
    Add {
        /// Device id: 1 to 64 of A-Z a-z 0-9 . _ -
        name: String,
        /// Tags, e.g. site=north,manufacturer=acme,model=P-200
        #[arg(long, default_value = "")]
        tags: String,
        /// Target profile the device's packages are built for.
        #[arg(long, default_value = "default")]
        profile: String,
        #[command(flatten)]
        api: ApiArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List devices, with the deployment each should run.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: the broker and the API refuse it within seconds. Needs an admin token.
    Revoke {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Args)]
pub struct HubArgs {
    /// Configuration file (`impeller hub generate-config` prints the commented default); the
    /// flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The hub's data folder [default: impeller-hub-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite:PATH or postgres://… [default: sqlite in the data folder].
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Where the embedded MQTT broker listens (not 1883, which a system broker may hold)
    /// [default: 127.0.0.1:1884].
    #[arg(long, value_name = "ADDR")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Use this MQTT broker (mqtt://host:port, mqtts://host:port) instead of the embedded one;
    /// the hub's login and CA at it are set in the config file ([mqtt] broker_*).
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Where package files are kept: file:///ABSOLUTE/PATH or s3://BUCKET[/PREFIX] (AWS_*
    /// variables for credentials and endpoint) [default: packages/ in the data folder].
    #[arg(long, value_name = "URL")]
    pub artifacts: Option<String>,
    /// Let any client connect to the embedded broker (by default only provisioned devices).
    #[arg(long)]
    pub allow_anonymous: bool,
    /// Where the HTTP API (/api/v1) listens [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Public key (impeller keys generate) that uploaded packages must be signed with; repeat
    /// for several (added to the file's). Without one, package uploads are refused.
    #[arg(long = "trusted-key", value_name = "FILE")]
    pub trusted_keys: Vec<PathBuf>,
    /// Secret key the hub signs the packages of the pipelines it runs with (`impeller pipeline
    /// submit`); its public file must be trusted too.
    #[arg(long, value_name = "FILE")]
    pub pipeline_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HubCommand {
    #[command(subcommand)]
    pub action: Option<HubAction>,
    #[command(flatten)]
    pub run: HubArgs,
}

#[derive(Debug, Subcommand)]
pub enum HubAction {
    /// Print the commented default configuration file.
    GenerateConfig,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate an Ed25519 signing key: NAME.secret.json (mode 0600) and NAME.public.json.
    Generate(KeysGenerateArgs),
}

#[derive(Debug, Args)]
pub struct KeysGenerateArgs {
    /// Name of the key files.
    #[arg(long)]
    pub name: String,
    /// Folder to write them to.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum PackageCommand {
    /// Build and sign a package from a model and its training data.
    Build(PackageBuildArgs),
    /// Verify a package as a device would: signature, hashes, contents, and optionally the
    /// device's target and installed release, then run its self-test.
    Verify(PackageVerifyArgs),
    /// Show what a package claims to be, without verifying it.
    Inspect {
        /// Package file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sign a rollback directive that lets devices of a target install an older release.
    AllowRollback(AllowRollbackArgs),
    /// Upload a signed package to a running hub; prints its SHA-256.
    Upload {
        /// Package file.
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct PackageBuildArgs {
    /// Model file written by `impeller train`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// The CSV file the model was trained on (checked against the model's data hash).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// The number of rows the model was trained on, if not all.
    #[arg(long, value_name = "N")]
    pub rows: Option<usize>,
    /// Secret key file from `impeller keys generate`.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Registered model name.
    #[arg(long)]
    pub name: String,
    /// Model version, e.g. 1.4.0.
    #[arg(long)]
    pub model_version: String,
    /// Release number, from one counter for the whole registry; devices only move forward.
    #[arg(long)]
    pub release: u64,
    /// Target profile (device class) the package is for.
    #[arg(long)]
    pub target: String,
    /// Days until devices refuse the package.
    #[arg(long, value_name = "DAYS", default_value_t = 90)]
    pub expires_in_days: u32,
    /// A validation metric to record, NAME=VALUE (repeatable).
    #[arg(long = "metric", value_name = "NAME=VALUE")]
    pub metrics: Vec<String>,
    /// Pipeline run that produced the model.
    #[arg(long, value_name = "ID")]
    pub pipeline_run: Option<String>,
    /// Where to write the package.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct PackageVerifyArgs {
    /// Package file.
    pub file: PathBuf,
    /// A trusted public key file (repeatable).
    #[arg(long = "trust", value_name = "FILE", required = true)]
    pub trust: Vec<PathBuf>,
    /// Check that the package is for this target profile (default: its own).
    #[arg(long)]
    pub target: Option<String>,
    /// Check that the package is newer than this installed release.
    #[arg(long, value_name = "N")]
    pub installed_release: Option<u64>,
    /// A signed rollback directive allowing an older release.
    #[arg(long, value_name = "FILE")]
    pub rollback: Option<PathBuf>,
    /// Largest package accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub max_bytes: u64,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AllowRollbackArgs {
    /// Secret key file.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// The older release devices may install.
    #[arg(long)]
    pub release: u64,
    /// Target profile the directive applies to.
    #[arg(long)]
    pub target: String,
    /// Days the directive stays valid.
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    pub expires_in_days: u32,
    /// Where to write the directive.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// The SKAB leaderboard protocol: per file, train on the first 400 rows, score the rest
    /// causally one row at a time; F1, false- and missed-alarm rates summed over all files.
    Skab(SkabArgs),
    /// A simulated fleet: one model per class (manufacturer and site) trained on its healthy history,
    /// then every pump scored frame by frame through its adapter; per fault class how many
    /// were caught and how fast, and false alarms per healthy pump-day.
    Fleet(FleetBenchArgs),
    /// The audit trail: seal N records (a signed checkpoint every 1,000), export them as JSON
    /// Lines, and time `impeller audit verify --file` on the export, against hashing the same
    /// bytes with SHA-256 alone.
    Audit(AuditBenchArgs),
    /// The example pipeline on SKAB against a hub started in-process (embedded broker, SQLite):
    /// import, train, evaluate, validate, package for three profiles, sign, register; then an
    /// unchanged rerun, and the same spec in a fresh work folder. Times each run.
    Pipeline(PipelineBenchArgs),
    /// Int8 weights on SKAB: the example pipeline once per detector kind with weight matrices,
    /// for a float and an int8 target; per kind the int8 model's alarm agreement with the
    /// float model on the 34 labelled experiments, its score differences, and both variants'
    /// model size, memory estimate and scoring time.
    Int8(Int8BenchArgs),
    /// The hub under a fleet's load: a real `impeller hub` as a child process with every device
    /// provisioned, and one MQTT connection per device publishing telemetry at a steady rate,
    /// resending what is not acknowledged after a reconnect. Reports the stored rate, the
    /// latency from publish to the acknowledgement the hub sends after its commit, and checks
    /// that the store holds every message exactly once.
    Load(LoadBenchArgs),
}

#[derive(Debug, Args)]
pub struct LoadBenchArgs {
    /// Devices connected at once.
    #[arg(long, default_value_t = 10_000)]
    pub devices: u64,
    /// Messages per second offered by the whole fleet.
    #[arg(long, default_value_t = 50_000.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// The hub's database (default: SQLite in a temporary folder). A postgres:// URL gets a
    /// fresh database of its own on that server, dropped at the end.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// An external MQTT broker (mqtt://host:port) for the hub and the devices instead of the
    /// embedded one.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// Kill the hub (SIGKILL) this many seconds into the run and start it again.
    #[arg(long, value_name = "SECS")]
    pub restart_after: Option<u64>,
    /// Devices reach the embedded broker over TLS (mqtts, a certificate made for the run).
    #[arg(long, conflicts_with = "broker")]
    pub tls: bool,
    /// Messages per MQTT packet (an array of envelopes, as an agent sends what its outbox has
    /// ready): each device publishes this many at a time, `rate / devices / batch` times a second.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// The `impeller` binary to run the hub with (default: this one).
    #[arg(long, value_name = "FILE")]
    pub hub_bin: Option<PathBuf>,
    /// The hub keeps the devices' telemetry this many seconds, its retention sweeping every
    /// tenth of that: deletions at the rate of ingestion. The check then counts a device's
    /// messages before the oldest it still holds as forgotten, not missing.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(10..))]
    pub retain_secs: Option<u64>,
}

#[derive(Debug, Args)]
pub struct PipelineBenchArgs {
    /// The SKAB data folder.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The spec to run (default: the built-in example).
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Int8BenchArgs {
    /// The SKAB data folder.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuditBenchArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Keep the export and the public key in this folder (default: a temporary one).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FleetBenchArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Hours of healthy history to train on (two days: the daily temperature cycle twice).
    #[arg(long, default_value_t = 48.0)]
    pub train_hours: f64,
    /// Hours scored after training; faults begin within its middle half.
    #[arg(long, default_value_t = 12.0)]
    pub hours: f64,
    /// One model per manufacturer across all sites, instead of one per manufacturer and site
    /// (to measure what pooling costs).
    #[arg(long)]
    pub pool_sites: bool,
    /// Print per-pump outcomes too.
    #[arg(long)]
    pub per_pump: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Split {
    /// Every file.
    All,
    /// Even-numbered files (valve1/0.csv, other/2.csv, …): where settings were chosen.
    Dev,
    /// Odd-numbered files: never used to choose settings.
    Holdout,
}

#[derive(Debug, Args)]
pub struct SkabArgs {
    /// Folder holding the SKAB data (valve1/, valve2/, other/; anomaly-free/ is skipped).
    #[arg(long, value_name = "DIR", required_unless_present = "generate_config")]
    pub data: Option<PathBuf>,
    /// Benchmark configuration (TOML); default: the built-in one (see --generate-config).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only run the named detector (repeatable); names come from the configuration.
    #[arg(long = "detector", value_name = "NAME")]
    pub detectors: Vec<String>,
    /// Which files to score.
    #[arg(long, value_enum, default_value_t = Split::All)]
    pub split: Split,
    /// Override every detector's alarm margin (used to choose margins on the dev split).
    #[arg(long, value_name = "X")]
    pub margin: Option<f64>,
    /// Write the first (or only selected) detector's predictions as CSV `file,row,prediction`,
    /// the input of the independent scorer shared/tools/skab-score.py.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
    /// Also print per-file counts.
    #[arg(long)]
    pub per_file: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print the built-in configuration, with comments, and exit.
    #[arg(long)]
    pub generate_config: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// CSV file of normal operation (SKAB layout: `;`-separated, a `datetime` column).
    #[arg(long, value_name = "FILE", required_unless_present = "generate_config")]
    pub data: Option<PathBuf>,
    /// Train on the first N data rows only (default: all rows).
    #[arg(long, value_name = "N")]
    pub rows: Option<usize>,
    /// Sensor columns to use, comma-separated (default: every column but time and labels).
    #[arg(long, value_name = "A,B,…", value_delimiter = ',')]
    pub channels: Vec<String>,
    /// Training configuration (TOML); default: the built-in one (see --generate-config).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to write the model file.
    #[arg(long, value_name = "FILE", required_unless_present = "generate_config")]
    pub out: Option<PathBuf>,
    /// Print the training summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the built-in training configuration, with comments, and exit.
    #[arg(long)]
    pub generate_config: bool,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Model file written by `impeller train`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// CSV file to score; its columns are matched to the model's channels by name.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Print JSON lines instead of CSV.
    #[arg(long)]
    pub json: bool,
    /// The file is a simulated manufacturer's (acme, nordpump, kestrel: its column names and
    /// units, as `impeller sim` and the demo write them): read through that manufacturer's
    /// adapter, frame by frame as its agent would. Each output row is then a model frame.
    #[arg(long, value_name = "NAME")]
    pub manufacturer: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Show what a model file holds: channels, features, detector, calibration, training data.
    Inspect {
        /// Model file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a model file's scoring graph (scaler and detector) as ONNX: features in, raw score
    /// out; the rolling features and the alarm settings stay in the model file.
    ExportOnnx {
        /// Model file.
        file: PathBuf,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Registered models on the hub, with their aliases.
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
    /// A registered model's versions: status, release, metrics, lineage, aliases.
    Versions {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
    /// One version in full (by number or alias): gates, packages, lineage.
    Show {
        name: String,
        /// A version number, or an alias such as `champion`.
        #[arg(value_name = "VERSION")]
        which: String,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
    /// Point an alias (`champion`, `challenger`, a fleet's name) at a ready version.
    Alias {
        name: String,
        alias: String,
        #[arg(value_name = "VERSION")]
        number: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove an alias.
    Unalias {
        name: String,
        alias: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Lineage both ways: what a dataset built and which devices run it, or what a device runs
    /// and which data built it.
    Lineage {
        /// A dataset's hash.
        #[arg(long, conflicts_with = "device", required_unless_present = "device")]
        dataset: Option<String>,
        /// A device id.
        #[arg(long)]
        device: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Run a pipeline spec and register the version it builds on the hub (`--local`: build and
    /// check only). Exit code 4 when a gate or a fit check fails.
    Run(PipelineRunArgs),
    /// Print the commented example spec (SKAB, three target profiles).
    GenerateSpec,
    /// Have the hub run a spec (on one of its datasets, signing with its pipeline key), with the
    /// target profiles the spec names; prints the run id, or waits and prints the outcome.
    Submit {
        spec: PathBuf,
        /// Wait for the run to finish, printing each step; exit code 4 if it is rejected.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The hub's runs since it started: state, step, outcome.
    Runs {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct PipelineRunArgs {
    /// The pipeline spec (TOML).
    pub spec: PathBuf,
    /// Import this CSV folder instead of the spec's `data.import` (any copy of SKAB).
    #[arg(long, value_name = "DIR")]
    pub import: Option<PathBuf>,
    /// Where datasets, the step cache and run records are kept.
    #[arg(long, value_name = "DIR", default_value = "impeller-work")]
    pub work: PathBuf,
    /// Secret key that signs the packages (impeller keys generate).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Build and check only: no hub, nothing registered.
    #[arg(long)]
    pub local: bool,
    /// Release number of a --local run's packages (with a hub, the registry hands it out).
    #[arg(long, default_value_t = 1)]
    pub release: u64,
    /// More keys the champion's packages may be signed with (the signing key's own is trusted).
    #[arg(long = "trusted-key", value_name = "FILE")]
    pub trusted_keys: Vec<PathBuf>,
    /// Print the run record as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum RetrainCommand {
    /// Set a model's retraining policy, with the pipeline spec it runs (and the target profiles
    /// the spec names, read beside it).
    Set {
        model: String,
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The policy's state: what the loop waits for, the retraining under way or awaiting approval.
    Show {
        model: String,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
    /// Approve the step a retraining awaits (promotion to champion, or rollout).
    Approve {
        model: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a model's retraining policy.
    Remove {
        model: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a commented example policy.
    GeneratePolicy,
}

#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// The alert was a real fault: counted for its model's precision, and an incident that
    /// labels later snapshots.
    Confirm(VerdictArgs),
    /// The alert was a false alarm (replaces an earlier verdict, withdrawing its incident).
    Reject(VerdictArgs),
    /// Alert precision per model version, from the verdicts given.
    Precision {
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct VerdictArgs {
    /// The alert's device.
    pub device: String,
    /// The alert's sequence number (`impeller alerts` shows it).
    pub seq: u64,
    #[arg(long, default_value = "")]
    pub work_order: String,
    #[arg(long, default_value = "")]
    pub note: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Record an incident on the hub.
    Add {
        device: String,
        /// Start: `YYYY-MM-DD hh:mm:ss` (UTC) or milliseconds since the epoch.
        #[arg(long)]
        start: String,
        /// End (exclusive), in the same form.
        #[arg(long)]
        end: String,
        /// What it was: a fault class, `test`, `maintenance`.
        #[arg(long)]
        kind: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Incidents recorded on the hub.
    List {
        #[arg(long)]
        device: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Import a folder of SKAB-layout CSV files (one part per file) as a dataset; prints its hash.
    Create {
        #[arg(long, value_name = "DIR")]
        import: PathBuf,
        #[arg(long, value_name = "DIR", default_value = "impeller-work")]
        work: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The datasets in the work folder.
    List {
        #[arg(long, value_name = "DIR", default_value = "impeller-work")]
        work: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// One dataset's channels and parts (checked against its hash).
    Show {
        hash: String,
        #[arg(long, value_name = "DIR", default_value = "impeller-work")]
        work: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Snapshot on the hub: the raw samples of the devices a condition selects over a time
    /// range, one part per device, labelled by incidents if asked; prints the hash.
    Snapshot {
        /// Devices by tags and profile, as deployments select them: `tags.site = 'gulf'`, `*`.
        #[arg(long, default_value = "*")]
        condition: String,
        /// From this long ago (e.g. 48h), up to now.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_s, conflicts_with = "since_ms")]
        since: Option<u64>,
        #[arg(long, value_name = "MS")]
        since_ms: Option<i64>,
        /// End of the range (ms since the epoch, exclusive); default now.
        #[arg(long, value_name = "MS")]
        until_ms: Option<i64>,
        /// Channels in this order (default: the devices' own).
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        /// Label rows with the devices' incidents.
        #[arg(long)]
        label_incidents: bool,
        /// Leave out rows inside incidents.
        #[arg(long)]
        exclude_incidents: bool,
        /// Leave out a device's rows from its first confirmed fault in the range on.
        #[arg(long)]
        exclude_after_confirmed_fault: bool,
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        json: bool,
    },
    /// Download a hub's dataset into the work folder (checked against its hash).
    Pull {
        hash: String,
        #[arg(long, value_name = "DIR", default_value = "impeller-work")]
        work: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Copy a dataset's Parquet files and manifest to a folder (pandas reads them as they are).
    Export {
        hash: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, value_name = "DIR", default_value = "impeller-work")]
        work: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    /// Clap checks the whole command tree (e.g. no two flags with one name) only when asked.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
