// MegaLiveTexture: one Blueprint/Python function library; depends on the engine only.

using UnrealBuildTool;

public class MegaLiveTexture : ModuleRules
{
	public MegaLiveTexture(ReadOnlyTargetRules Target) : base(Target)
	{
		PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;
		PublicDependencyModuleNames.AddRange(new string[] { "Core", "CoreUObject", "Engine" });
	}
}
