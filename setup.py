from setuptools import find_packages, setup

with open("requirements.txt") as f:
    requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]

setup(
    name="accessory",
    version="0.1.0",
    description="Finetuning LLaMA-family models: LLaMA2-Accessory's workflow, correct, tested and fast",
    packages=find_packages(include=["accessory", "accessory.*"]),
    python_requires=">=3.9",
    install_requires=requirements,
    extras_require={"test": ["pytest", "transformers", "safetensors"]},
)
