fn main() {
    println!("libtorch linked; cuda available: {}", tch::Cuda::is_available());
}
