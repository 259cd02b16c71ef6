"""Networks: ResNet backbones with torchvision names and a stage-wise forward; ViTs with
resolution-following position embeddings; global-batch BatchNorm; image classifiers."""
