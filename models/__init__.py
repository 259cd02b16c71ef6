"""Networks: ResNet backbones with torchvision names and a stage-wise forward; global-batch BatchNorm."""
