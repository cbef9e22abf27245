# Sourced by the comparison scripts: $model is the SmolLM2 fixture as a Hugging Face folder,
# laid out where the tests lay it out (target/test-data/smollm2-135m), weights decompressed once.
model="$root/target/test-data/smollm2-135m"
if [ ! -f "$model/model.safetensors" ]; then
  mkdir -p "$model"
  cp "$shared/models/smollm2-135m/"{config.json,tokenizer.json,tokenizer_config.json,README.md} "$model/"
  zstd -q -d --long=27 "$shared/models/smollm2-135m/model.safetensors.zst" -o "$model/model.safetensors"
fi
