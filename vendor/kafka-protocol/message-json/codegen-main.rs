use failure::Error;
use std::fs;

pub mod generate_messages;

// Local variant: reads Kafka message JSON from argv[1], writes generated modules into argv[2].
fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let input = &args[1];
    let output = &args[2];
    let mut input_file_paths = Vec::new();
    for file in fs::read_dir(input)? {
        let path = file?.path();
        if path.extension() == Some("json".as_ref()) {
            input_file_paths.push(path);
        }
    }
    input_file_paths.sort();
    generate_messages::run(output, input_file_paths)?;
    Ok(())
}
